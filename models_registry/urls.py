from django.urls import path

from models_registry import views

urlpatterns = [
    path("p/<slug:project_slug>/models/", views.model_leaderboard, name="model_leaderboard"),
    path("p/<slug:project_slug>/models/<int:version_id>/promote/", views.promote_version, name="promote_version"),
]
