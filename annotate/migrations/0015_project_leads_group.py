"""The "Project leads" group with its permissions, so that a fresh database has it after `migrate`."""

from django.contrib.auth.management import create_permissions
from django.db import migrations

from annotate.leads import LEAD_APPS, project_leads_group


def create_leads_group(apps, schema_editor):
    # Django creates permissions after the whole migrate run (post_migrate); on a fresh database they do not exist
    # yet here, so make those of the lead's apps now (it skips any that exist).
    for label in LEAD_APPS:
        app_config = apps.get_app_config(label)
        app_config.models_module = True  # a historical app has none; create_permissions skips an app without one
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None
    project_leads_group(apps)


class Migration(migrations.Migration):
    dependencies = [
        ("annotate", "0014_invitation"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("training", "0004_workers"),
        ("models_registry", "0003_training_round_link"),
    ]

    # Unapplying leaves the group: a lead's membership in it should not vanish with a rollback.
    operations = [migrations.RunPython(create_leads_group, migrations.RunPython.noop)]
