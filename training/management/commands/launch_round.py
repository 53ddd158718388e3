import time

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from annotate.models import Project, QuotaReached
from training.models import TrainingRound
from training.rounds import launch_round


class Command(BaseCommand):
    help = (
        "Queue a training round for a Celery worker on the gpu queue; with --wait, follow it and exit non-zero "
        "unless it succeeds."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("project_slug")
        parser.add_argument("--method", required=True, choices=TrainingRound.Method.values)
        parser.add_argument(
            "--base",
            default="",
            help="policy version, hub id or any local path (default: the active policy); unlike a lead's base, a "
            "path need not be under ARBITER_MODEL_ROOTS",
        )
        parser.add_argument(
            "--reward-model", default="", help="ppo, rloo, grpo: score with this reward version (reward-v2)"
        )
        parser.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="a hyper-parameter for every stage that has it, or stage.key=value for one (repeatable)",
        )
        parser.add_argument(
            "--filter", action="append", default=[], metavar="KEY=VALUE", help="a dataset filter (split=train, …)"
        )
        parser.add_argument("--wait", action="store_true", help="follow the round until it ends")

    def handle(self, *args: object, project_slug: str, wait: bool, **options: object) -> None:
        project = Project.objects.filter(slug=project_slug).first()
        if project is None:
            raise CommandError(f"No project {project_slug!r}.")
        try:
            training_round = launch_round(
                project,
                method=options["method"],
                base=options["base"],
                reward_model=options["reward_model"],
                settings_=_pairs("--set", options["set"]),
                filters=_pairs("--filter", options["filter"]),
                trusted=True,  # the operator, who can read the server's files anyway
            )
        except ValidationError as error:
            raise CommandError("; ".join(f"{field}: {' '.join(messages)}" for field, messages in error)) from None
        except QuotaReached as error:
            raise CommandError(str(error)) from None
        self.stdout.write(f"Queued round {training_round.number} of {project.slug} (id {training_round.pk})")
        if wait:
            self._follow(training_round)

    def _follow(self, training_round: TrainingRound) -> None:
        shown = None
        while not training_round.is_finished:
            time.sleep(1)
            training_round.refresh_from_db()
            now = (training_round.status, training_round.stage, training_round.step)
            if now != shown:
                shown = now
                self.stdout.write(
                    f"{training_round.status} {training_round.stage or '-'} step {training_round.step}/"
                    f"{training_round.total_steps} ({training_round.progress:.0%})"
                )
        if training_round.status != TrainingRound.Status.SUCCEEDED:
            raise CommandError(f"Round {training_round.number} {training_round.status}: {training_round.error}")
        for version in training_round.model_versions.all():
            self.stdout.write(self.style.SUCCESS(f"Registered {version} at {version.path}"))


def _pairs(option: str, items: list[str]) -> dict[str, str]:
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise CommandError(f"{option} {item!r}: expected KEY=VALUE")
        pairs[key.strip()] = value.strip()
    return pairs
