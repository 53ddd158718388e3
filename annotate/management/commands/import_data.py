from pathlib import Path

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from annotate.importing import FORMATS, ImportFailed, import_file
from annotate.models import Project


class Command(BaseCommand):
    help = "Import prompts, prompt + responses, or preference pairs (JSONL or CSV, optionally gzipped) into a project."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("project_slug")
        parser.add_argument("file", type=Path)
        parser.add_argument("--create", action="store_true", help="Create the project if it does not exist.")
        parser.add_argument("--format", choices=FORMATS, help="Force the row format instead of detecting it.")

    def handle(
        self, *args: object, project_slug: str, file: Path, create: bool, format: str | None, **options: object
    ) -> None:
        if not file.is_file():
            raise CommandError(f"{file}: no such file")
        project = Project.objects.filter(slug=project_slug).first()
        if project is None and not create:
            raise CommandError(f"No project {project_slug!r}: create it in the admin or pass --create.")
        try:
            # A project made by --create goes with a failed import: nothing is left behind.
            with transaction.atomic():
                if project is None:
                    project = Project(name=project_slug, slug=project_slug)
                    project.full_clean()
                    project.save()
                result = import_file(project, file, format=format)
        except ValidationError as error:
            raise CommandError(f"Cannot create project {project_slug!r}: {'; '.join(error.messages)}") from None
        except ImportFailed as error:
            raise CommandError(f"{file}: {error}. Nothing was imported.") from None
        self.stdout.write(self.style.SUCCESS(f"{project.slug}: {result}"))
