from django.contrib import admin

from models_registry.models import ModelVersion


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    list_display = ["__str__", "project", "kind", "version", "base_model", "created_at"]
    list_filter = ["kind", "project"]
    search_fields = ["base_model", "project__slug", "project__name"]
    list_select_related = ["project"]
