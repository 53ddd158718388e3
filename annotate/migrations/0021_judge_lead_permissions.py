"""The "Project leads" group gains the judges' permissions (annotate/leads.py LEAD_PERMISSIONS)."""

from django.db import migrations

from annotate.leads import create_leads_group


class Migration(migrations.Migration):
    dependencies = [("annotate", "0020_snapshot_judge_weights")]

    operations = [migrations.RunPython(create_leads_group, migrations.RunPython.noop)]
