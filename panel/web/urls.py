from django.urls import include, path

from panel.web import iso_views, views

urlpatterns = [
    path("", views.instance_list, name="instance-list"),
    path("instances/new/", views.instance_order, name="instance-order"),
    path("instances/<int:pk>/", views.instance_detail, name="instance-detail"),
    path("instances/<int:pk>/part/<str:part>/", views.instance_part, name="instance-part"),
    path("instances/<int:pk>/usage/", views.instance_usage, name="instance-usage"),
    path("instances/<int:pk>/<str:action>/", views.instance_action, name="instance-action"),
    path("images/iso/", iso_views.iso_list, name="iso-list"),
    path("", include("panel.accounts.urls")),
]
