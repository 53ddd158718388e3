from django.urls import path

from annotate import my_work, people, project_setup, views

urlpatterns = [
    path("", views.home, name="home"),
    path("p/<slug:project_slug>/", views.project_detail, name="project_detail"),
    path("p/<slug:project_slug>/annotate/", views.task_page, name="task_page"),
    path(
        "p/<slug:project_slug>/assignments/<int:assignment_id>/submit/",
        views.submit_assignment,
        name="submit_assignment",
    ),
    path("p/<slug:project_slug>/assignments/<int:assignment_id>/skip/", views.skip_assignment, name="skip_assignment"),
    path("p/<slug:project_slug>/write-preview/", views.write_preview, name="write_preview"),
    path("p/<slug:project_slug>/guidelines/", views.guidelines, name="guidelines"),
    path("p/<slug:project_slug>/stats/", views.project_stats, name="project_stats"),
    path("p/<slug:project_slug>/quality/", views.quality_page, name="quality_page"),
    path("p/<slug:project_slug>/quality/recompute/", views.quality_recompute, name="quality_recompute"),
    path("p/<slug:project_slug>/quality/thresholds/", views.quality_thresholds, name="quality_thresholds"),
    path("p/<slug:project_slug>/quality/members/<str:username>/", views.member_decision, name="member_decision"),
    # The "my work" pages (annotate/my_work.py).
    path("p/<slug:project_slug>/my-work/", my_work.my_work, name="my_work"),
    path("p/<slug:project_slug>/my-work/<int:annotation_id>/", my_work.change_answer, name="change_answer"),
    # Setting up a project (annotate/project_setup.py)
    path("p/<slug:project_slug>/settings/", project_setup.project_settings, name="project_settings"),
    path(
        "p/<slug:project_slug>/settings/guidelines-preview/",
        project_setup.guidelines_preview,
        name="guidelines_preview",
    ),
    path("p/<slug:project_slug>/settings/scale-points/", project_setup.scale_points, name="scale_points"),
    path("p/<slug:project_slug>/tasks/<int:task_id>/preview/", project_setup.task_preview, name="task_preview"),
    path("tokens/", views.api_tokens, name="api_tokens"),
    path("tokens/<int:token_id>/revoke/", views.revoke_api_token, name="revoke_api_token"),
    # People: invitations, joining by one, a lead's new project (annotate/people.py)
    path("projects/new/", people.new_project, name="new_project"),
    path("p/<slug:project_slug>/invitations/", people.invitations, name="invitations"),
    path(
        "p/<slug:project_slug>/invitations/<int:invitation_id>/revoke/",
        people.revoke_invitation,
        name="revoke_invitation",
    ),
    path("invite/<str:token>/", people.accept_invitation, name="accept_invitation"),
]
