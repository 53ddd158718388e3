from django.urls import path

from annotate import views

urlpatterns = [
    path("", views.home, name="home"),
    path("p/<slug:project_slug>/", views.project_detail, name="project_detail"),
]
