"""The instance page's "Snapshots & backups" tab (included before panel.web's URLs)."""

from django.urls import path

from panel.backups import views

urlpatterns = [
    path("instances/<int:pk>/backups/part/", views.backups_part, name="backups-part"),
    path("instances/<int:pk>/snapshots/take/", views.snapshot_take, name="snapshot-take"),
    path("instances/<int:pk>/snapshots/<slug:name>/restore/", views.snapshot_restore, name="snapshot-restore"),
    path("instances/<int:pk>/snapshots/<slug:name>/delete/", views.snapshot_delete, name="snapshot-delete"),
    path("instances/<int:pk>/backups/take/", views.backup_take, name="backup-take"),
    path("instances/<int:pk>/backups/schedule/", views.schedule_update, name="backup-schedule"),
    path("instances/<int:pk>/backups/<int:backup_id>/restore/", views.backup_restore, name="backup-restore"),
    path("instances/<int:pk>/backups/<int:backup_id>/restore-new/", views.backup_restore_new,
         name="backup-restore-new"),
    path("instances/<int:pk>/backups/<int:backup_id>/delete/", views.backup_delete, name="backup-delete"),
]
