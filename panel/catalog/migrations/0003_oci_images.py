"""Imported OCI images: where an image came from, its id and its runtime config."""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("catalog", "0002_plan_hosts"),
    ]

    operations = [
        migrations.AddField(
            model_name="image",
            name="source",
            field=models.CharField(choices=[("built", "Built by Berth"), ("oci", "Imported OCI image")],
                                   default="built", max_length=10),
        ),
        migrations.AddField(
            model_name="image",
            name="digest",
            field=models.CharField(blank=True, help_text="Imported images: the config's sha256 (the image id).",
                                   max_length=80),
        ),
        migrations.AddField(
            model_name="image",
            name="config",
            field=models.JSONField(blank=True, default=dict,
                                   help_text="Imported images: entrypoint, cmd, env, working dir, user, ports, volumes."),
        ),
        migrations.AlterField(
            model_name="image",
            name="name",
            field=models.CharField(help_text="Imported images: repository:tag.", max_length=100),
        ),
    ]
