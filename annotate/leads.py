"""The "Project leads" group: the admin permissions a lead holds. The data migration that creates it after `migrate`,
`seed_demo` and the tests all build it with `project_leads_group`, so it is defined once."""

from typing import Any

from django.apps import apps as global_apps

LEADS_GROUP = "Project leads"
# What a lead may do in the admin; the admin's scoping decides on which rows.
LEAD_PERMISSIONS = {
    "prompt": ("view", "add", "change", "delete"),
    "response": ("view", "add", "change", "delete"),
    "task": ("view", "add", "change", "delete"),
    "taskresponse": ("view", "add", "change", "delete"),
    "assignment": ("view", "add", "change", "delete"),
    "annotation": ("view", "add", "change", "delete"),
    "membership": ("view", "add", "change", "delete"),
    # add: a lead creates projects (and leads each one made); they never delete one
    "project": ("view", "add", "change"),
    "datasetsnapshot": ("view",),
    "importjob": ("view",),
    # a judge is added, and its rate settings changed; its runs are started and cancelled from the admin
    "judge": ("view", "add", "change"),
    "judgerun": ("view", "change"),
    # training and models_registry: launch, watch and cancel rounds; review and promote model versions
    "traininground": ("view", "add", "change"),
    "modelversion": ("view", "change"),
}
LEAD_APPS = ["annotate", "training", "models_registry"]


def project_leads_group(apps: Any = global_apps) -> Any:
    """The "Project leads" group, created if need be, holding exactly the permissions a lead needs.

    `apps` is a migration's historical registry there, the live one elsewhere.
    """
    group_model, permission_model = apps.get_model("auth", "Group"), apps.get_model("auth", "Permission")
    codenames = [f"{action}_{model}" for model, actions in LEAD_PERMISSIONS.items() for action in actions]
    group, _ = group_model.objects.get_or_create(name=LEADS_GROUP)
    group.permissions.set(
        permission_model.objects.filter(content_type__app_label__in=LEAD_APPS, codename__in=codenames)
    )
    return group


def create_leads_group(apps: Any, schema_editor: Any) -> None:
    """The migrations' step that makes (or updates) the group: with the permissions of the lead's apps first."""
    from django.contrib.auth.management import create_permissions

    # Django creates permissions after the whole migrate run (post_migrate); on a fresh database they do not exist
    # yet here, so make those of the lead's apps now (it skips any that exist).
    for label in LEAD_APPS:
        app_config = apps.get_app_config(label)
        app_config.models_module = True  # a historical app has none; create_permissions skips an app without one
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None
    project_leads_group(apps)
