"""The "Project leads" group with its permissions, so that a fresh database has it after `migrate`."""

from django.db import migrations

from annotate.leads import create_leads_group


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
