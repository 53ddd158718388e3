from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html_join
from django.utils.safestring import mark_safe

from annotate.admin import ProjectScopedAdmin
from models_registry.models import ModelVersion


@admin.register(ModelVersion)
class ModelVersionAdmin(ProjectScopedAdmin):
    project_path = "project"
    list_display = ["__str__", "kind", "version", "status", "parent", "training_round", "snapshot", "created_at"]
    list_filter = ["kind", "status", ("project", admin.RelatedOnlyFieldListFilter)]
    search_fields = ["base_model", "adapter_path", "project__slug", "project__name", "snapshot_sha256"]
    list_select_related = ["project", "parent__project", "training_round__project"]
    actions = ["promote"]
    readonly_fields = [
        "project", "kind", "version", "base_model", "adapter_path", "parent", "training_round", "snapshot_sha256",
        "config", "eval_report", "code_version", "status", "created_at", "lineage",
    ]  # fmt: skip

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # versions come from training rounds

    @admin.display(description="Snapshot")
    def snapshot(self, version: ModelVersion) -> str:
        return version.snapshot_sha256[:12]

    @admin.display(description="Lineage (newest first)")
    def lineage(self, version: ModelVersion) -> str:
        return format_html_join(mark_safe(" &larr; "), "{} ({})", ((v, v.base_model) for v in version.lineage()))

    @admin.action(description="Promote to the project's active version of its kind")
    def promote(self, request: HttpRequest, queryset: QuerySet) -> None:
        if queryset.count() != 1:
            messages.warning(request, "Select one version to promote.")
            return
        version = queryset.get()
        version.promote()
        messages.success(request, f"{version} is now the active {version.get_kind_display().lower()}.")
