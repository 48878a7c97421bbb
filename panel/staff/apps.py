from django.apps import AppConfig


class StaffConfig(AppConfig):
    name = "panel.staff"
    verbose_name = "Staff pages"
