"""Application containers (OCI images): the order's command and environment, the image
before the last upgrade (for a rollback), and the upgrade and rollback operations."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("catalog", "0003_oci_images"),
        ("instances", "0001_initial"),
    ]

    operations = [
        migrations.AddField(
            model_name="instance",
            name="app_command",
            field=models.JSONField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="instance",
            name="app_env",
            field=models.JSONField(blank=True, default=dict),
        ),
        migrations.AddField(
            model_name="instance",
            name="previous_image",
            field=models.ForeignKey(
                blank=True, help_text="The image before the last upgrade: what a rollback returns to.",
                null=True, on_delete=django.db.models.deletion.PROTECT, related_name="+",
                to="catalog.image",
            ),
        ),
        migrations.AlterField(
            model_name="operation",
            name="action",
            field=models.CharField(
                choices=[("create", "Create"), ("start", "Start"), ("stop", "Stop"),
                         ("reboot", "Reboot"), ("rebuild", "Rebuild"), ("change_plan", "Change plan"),
                         ("suspend", "Suspend"), ("unsuspend", "Unsuspend"), ("terminate", "Terminate"),
                         ("upgrade", "Upgrade"), ("rollback", "Roll back")],
                max_length=20,
            ),
        ),
    ]
