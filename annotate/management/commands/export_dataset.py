import shutil
from pathlib import Path

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from annotate.exports import Aggregation, create_snapshot, run_snapshot
from annotate.models import DatasetSnapshot, Project


class Command(BaseCommand):
    help = (
        "Export a project's annotations as a dataset snapshot (pairs, unpaired, votes or sft; JSONL or Parquet), "
        "copy it to a file, and print its sha256 and row count."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("project_slug")
        parser.add_argument("--kind", required=True, choices=DatasetSnapshot.Kind.values)
        parser.add_argument("--format", default="jsonl", choices=DatasetSnapshot.Format.values)
        parser.add_argument("--style", default="conversational", choices=DatasetSnapshot.Style.values)
        parser.add_argument("-o", "--output", required=True, type=Path, help="Where to write the file.")
        filters = parser.add_argument_group("filters and options (see annotate/exports.py)")
        filters.add_argument("--split", help="train or eval")
        filters.add_argument("--round", help="the tasks' training round")
        filters.add_argument("--since", help="annotations made at or after this ISO 8601 date or time (UTC)")
        filters.add_argument("--until", help="annotations made before this ISO 8601 date or time (UTC)")
        filters.add_argument("--annotator", help="only this username's annotations")
        filters.add_argument("--min-agreement", help="pairs and sft: least share of votes for the winner (0-1)")
        filters.add_argument(
            "--votes", help="whose answers: human (the default; judges' never), judge, or both (judges' weighted)"
        )
        filters.add_argument(
            "--aggregation",
            choices=Aggregation.values,
            help="pairs and sft: how a pair is decided (majority, the default; dawid-skene)",
        )
        filters.add_argument("--include-ties", action="store_true", help="pairs: keep ties, marked tie=true")
        filters.add_argument("--include-both-bad", action="store_true", help="pairs: keep both-bad pairs, marked")
        filters.add_argument("--ratings-as-pairs", action="store_true", help="pairs and sft: pair rated responses")
        filters.add_argument("--reveal-annotators", action="store_true", help="votes: usernames, not pseudonyms")

    def handle(self, *args: object, project_slug: str, output: Path, **options: object) -> None:
        project = Project.objects.filter(slug=project_slug).first()
        if project is None:
            raise CommandError(f"No project {project_slug!r}.")
        names = ["split", "round", "since", "until", "annotator", "min_agreement", "votes", "aggregation"]
        names += ["include_ties", "include_both_bad", "ratings_as_pairs", "reveal_annotators"]
        try:
            snapshot = create_snapshot(
                project,
                kind=options["kind"],
                format=options["format"],
                style=options["style"],
                filters={name: options[name] for name in names},
            )
        except ValidationError as error:
            raise CommandError(
                "; ".join(f"--{field.replace('_', '-')}: {' '.join(messages)}" for field, messages in error)
            ) from None
        snapshot = run_snapshot(snapshot)
        if snapshot.status != DatasetSnapshot.Status.READY:
            raise CommandError(f"Export {snapshot.pk} failed: {snapshot.error}")
        with snapshot.file.open("rb") as source, output.open("wb") as target:
            shutil.copyfileobj(source, target)
        self.stdout.write(f"sha256 {snapshot.sha256}")
        self.stdout.write(f"rows {snapshot.row_count}")
        if snapshot.judge_weights:
            weights = ", ".join(f"{name} {weight:.3f}" for name, weight in snapshot.judge_weights.items())
            self.stdout.write(f"judge weights {weights}")
        self.stdout.write(self.style.SUCCESS(f"Wrote {output} (snapshot {snapshot.pk}, {snapshot.file.name})"))
