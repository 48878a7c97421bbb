"""Beat's scheduled backups (queue ``panel``)."""

from celery import shared_task

from panel.backups import services


@shared_task(name="berth.panel.run_backup_schedules")
def run_backup_schedules() -> list[int]:
    """Start the scheduled backups that are due; retention runs as each one succeeds."""
    return services.run_due_schedules()
