from django.urls import path

from training import views

urlpatterns = [
    path("p/<slug:project_slug>/rounds/", views.round_list, name="round_list"),
    path("p/<slug:project_slug>/rounds/<int:number>/", views.round_page, name="round_page"),
    path("p/<slug:project_slug>/rounds/<int:number>/cancel/", views.cancel_round, name="cancel_round"),
]
