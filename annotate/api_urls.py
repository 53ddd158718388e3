"""The API's routes, mounted at /api/v1/ (see annotate/api.py for who may call what; training/api.py for rounds;
models_registry/api.py for model versions)."""

from django.urls import path

from annotate import api
from annotate.models import MembershipEvent
from models_registry import api as registry_api
from training import api as training_api

app_name = "api"

urlpatterns = [
    path("me/", api.MeView.as_view(), name="me"),
    path("auth/token/", api.LoginView.as_view(), name="login"),
    path("tokens/", api.TokenListView.as_view(), name="tokens"),
    path("tokens/<int:token_id>/", api.TokenDetailView.as_view(), name="token_detail"),
    path("projects/", api.ProjectListView.as_view(), name="projects"),
    path("projects/<slug:slug>/", api.ProjectDetailView.as_view(), name="project_detail"),
    path("projects/<slug:slug>/stats/", api.ProjectStatsView.as_view(), name="project_stats"),
    path("projects/<slug:slug>/prompts/", api.PromptListView.as_view(), name="prompts"),
    path("projects/<slug:slug>/responses/", api.ResponseListView.as_view(), name="responses"),
    path("projects/<slug:slug>/import/", api.ImportView.as_view(), name="import"),
    path("projects/<slug:slug>/imports/", api.ImportJobListView.as_view(), name="imports"),
    path("projects/<slug:slug>/imports/<int:job_id>/", api.ImportJobDetailView.as_view(), name="import_detail"),
    path("projects/<slug:slug>/next/", api.NextTaskView.as_view(), name="next_task"),
    path("projects/<slug:slug>/assignments/<int:assignment_id>/submit/", api.SubmitView.as_view(), name="submit"),
    path("projects/<slug:slug>/assignments/<int:assignment_id>/skip/", api.SkipView.as_view(), name="skip"),
    path("projects/<slug:slug>/annotations/", api.AnnotationListView.as_view(), name="annotations"),
    path("projects/<slug:slug>/my-work/", api.MyWorkView.as_view(), name="my_work"),
    path(
        "projects/<slug:slug>/annotations/<int:annotation_id>/change/",
        api.ChangeAnswerView.as_view(),
        name="change_answer",
    ),
    path("projects/<slug:slug>/exports/", api.ExportListView.as_view(), name="exports"),
    path("projects/<slug:slug>/exports/<int:snapshot_id>/", api.ExportDetailView.as_view(), name="export_detail"),
    path(
        "projects/<slug:slug>/exports/<int:snapshot_id>/download/",
        api.ExportDownloadView.as_view(),
        name="export_download",
    ),
    path("projects/<slug:slug>/quality/", api.QualityView.as_view(), name="quality"),
    path("projects/<slug:slug>/quality/recompute/", api.QualityRecomputeView.as_view(), name="quality_recompute"),
    path("projects/<slug:slug>/judges/", api.JudgeListView.as_view(), name="judges"),
    path("projects/<slug:slug>/judges/<slug:name>/runs/", api.JudgeRunListView.as_view(), name="judge_runs"),
    path(
        "projects/<slug:slug>/judges/<slug:name>/runs/<int:run_id>/",
        api.JudgeRunDetailView.as_view(),
        name="judge_run_detail",
    ),
    path(
        "projects/<slug:slug>/judges/<slug:name>/runs/<int:run_id>/cancel/",
        api.JudgeRunCancelView.as_view(),
        name="judge_run_cancel",
    ),
    *(
        path(
            f"projects/<slug:slug>/members/<str:username>/{action}/",
            api.MemberDecisionView.as_view(kind=kind),
            name=f"member_{action}",
        )
        for action, kind in (
            ("pause", MembershipEvent.Kind.PAUSED),
            ("resume", MembershipEvent.Kind.RESUMED),
            ("exclude", MembershipEvent.Kind.EXCLUDED),
            ("include", MembershipEvent.Kind.INCLUDED),
        )
    ),
    path("projects/<slug:slug>/member-events/", api.MembershipEventListView.as_view(), name="member_events"),
    path("projects/<slug:slug>/rounds/", training_api.RoundListView.as_view(), name="rounds"),
    path("projects/<slug:slug>/rounds/<int:number>/", training_api.RoundDetailView.as_view(), name="round_detail"),
    path(
        "projects/<slug:slug>/rounds/<int:number>/cancel/",
        training_api.RoundCancelView.as_view(),
        name="round_cancel",
    ),
    path(
        "projects/<slug:slug>/rounds/<int:number>/relaunch/",
        training_api.RoundRelaunchView.as_view(),
        name="round_relaunch",
    ),
    path("projects/<slug:slug>/models/", registry_api.ModelVersionListView.as_view(), name="models"),
    path(
        "projects/<slug:slug>/models/<int:version_id>/",
        registry_api.ModelVersionDetailView.as_view(),
        name="model_detail",
    ),
    path(
        "projects/<slug:slug>/models/<int:version_id>/promote/",
        registry_api.ModelVersionPromoteView.as_view(),
        name="model_promote",
    ),
]
