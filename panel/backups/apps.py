from django.apps import AppConfig


class BackupsConfig(AppConfig):
    name = "panel.backups"
    label = "backups"

    def ready(self) -> None:
        # Snapshot and backup outcomes are applied where every host report is
        # (panel/instances/services/results.py), through its hook list.
        from panel.backups import services  # noqa: PLC0415
        from panel.instances.services import results  # noqa: PLC0415

        if services.on_operation_finished not in results.FINISHED_HOOKS:
            results.FINISHED_HOOKS.append(services.on_operation_finished)
