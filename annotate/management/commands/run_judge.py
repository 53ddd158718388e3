from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from annotate import judges
from annotate.models import Judge, JudgeRun

OPTIONS = {"round_number": "--round"}


class Command(BaseCommand):
    help = (
        "Run a project's judge here, in this process (no worker), over its open tasks, a random sample or a round's "
        "new samples; print how many tasks it answered, failed and skipped."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("project_slug")
        parser.add_argument("name", help="the judge's name (add_judge)")
        parser.add_argument("--limit", type=int, help="at most this many tasks (a sample's size)")
        parser.add_argument("--scope", default=JudgeRun.Scope.OPEN, choices=JudgeRun.Scope.values)
        parser.add_argument("--round", type=int, dest="round_number", help="with --scope round: its number")

    def handle(self, *args: object, project_slug: str, name: str, **options: object) -> None:
        judge = Judge.objects.filter(project__slug=project_slug, name=name).select_related("project").first()
        if judge is None:
            raise CommandError(f"No judge {name!r} in project {project_slug!r}.")
        try:
            job = judges.start(
                judge,
                scope=options["scope"],
                limit=options["limit"],
                round_number=options["round_number"],
                queue=False,
            )
        except ValidationError as error:
            raise CommandError(
                "; ".join(f"{OPTIONS.get(field, '--' + field)}: {' '.join(messages)}" for field, messages in error)
            ) from None
        self.stdout.write(f"Judge run {job.pk}: {judge.name} over {job.get_scope_display().lower()}")
        try:
            job = judges.run(job)
        except KeyboardInterrupt:
            # What it recorded stays; the run must not wait for the reaper as "running".
            job.finish(JudgeRun.Status.CANCELLED, error="Interrupted at the command line.")
            raise
        job.refresh_from_db()
        self.stdout.write(f"answered {job.answered}, failed {job.failed}, skipped {job.skipped} (of {job.total})")
        for failure in job.failures[:10]:
            self.stdout.write(f"  task {failure['task']}: {failure['error']}")
        if job.status == JudgeRun.Status.FAILED:
            raise CommandError(f"Judge run {job.pk} failed: {job.error}")
        self.stdout.write(self.style.SUCCESS(f"Judge run {job.pk} {job.status}"))
