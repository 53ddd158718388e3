from django.core.management.base import BaseCommand

from annotate.models import Assignment


class Command(BaseCommand):
    help = "Close annotation leases whose time ran out (Celery beat does this every few minutes)."

    def handle(self, *args: object, **options: object) -> None:
        self.stdout.write(f"Expired {Assignment.objects.expire_stale()} leases.")
