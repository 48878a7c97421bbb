"""Berth's panel: the Django project (web, API, panel-side Celery tasks)."""

from panel.celery import app as celery_app

__all__ = ("celery_app",)
