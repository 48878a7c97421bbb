"""Usage metering: what each instance's host agent measured (cumulative counters and gauges,
as reported) and when each instance changed state, so any period can be answered later."""

from django.db import models


class UsageSample(models.Model):
    """One report from a host agent for one instance, values as the host read them.

    ``cpu_seconds`` and the network byte counts are cumulative since the instance (re)started:
    they drop back towards zero after a restart. Memory and disk are what was in use then.
    """

    instance = models.ForeignKey(
        "instances.Instance", on_delete=models.CASCADE, related_name="usage_samples"
    )
    at = models.DateTimeField()
    cpu_seconds = models.FloatField()
    memory_bytes = models.PositiveBigIntegerField()
    net_rx_bytes = models.PositiveBigIntegerField()
    net_tx_bytes = models.PositiveBigIntegerField()
    disk_used_bytes = models.PositiveBigIntegerField()

    class Meta:
        ordering = ["instance", "at"]
        constraints = [
            # A report retried by Celery is stored once.
            models.UniqueConstraint(fields=["instance", "at"], name="usage_sample_once_per_instant"),
        ]

    def __str__(self) -> str:
        return f"#{self.instance_id} at {self.at:%Y-%m-%d %H:%M:%S}"


class InstanceStateChange(models.Model):
    """The state history of an instance, written by ``transition()``: running time comes from
    here, not from samples, so it is exact to the moment of each change."""

    instance = models.ForeignKey(
        "instances.Instance", on_delete=models.CASCADE, related_name="state_changes"
    )
    from_state = models.CharField(max_length=20)
    to_state = models.CharField(max_length=20)
    at = models.DateTimeField()

    class Meta:
        ordering = ["instance", "at", "id"]
        indexes = [models.Index(fields=["instance", "at"])]

    def __str__(self) -> str:
        return f"#{self.instance_id}: {self.from_state} → {self.to_state}"
