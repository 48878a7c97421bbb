from django.contrib.auth import views as auth_views
from django.urls import path

from panel.web import views

urlpatterns = [
    path("", views.instance_list, name="instance-list"),
    path("instances/new/", views.instance_order, name="instance-order"),
    path("instances/<int:pk>/", views.instance_detail, name="instance-detail"),
    path("instances/<int:pk>/<str:action>/", views.instance_action, name="instance-action"),
    path("login/", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
]
