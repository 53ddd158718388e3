from django.contrib import admin

from annotate.admin import ProjectScopedAdmin
from models_registry.models import ModelVersion


@admin.register(ModelVersion)
class ModelVersionAdmin(ProjectScopedAdmin):
    project_path = "project"
    list_display = ["__str__", "project", "kind", "version", "base_model", "created_at"]
    list_filter = ["kind", ("project", admin.RelatedOnlyFieldListFilter)]
    search_fields = ["base_model", "project__slug", "project__name"]
    list_select_related = ["project"]
    readonly_fields = ["created_at"]
