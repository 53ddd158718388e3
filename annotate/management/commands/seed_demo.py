"""Seed a demo: a lead, two annotators and a project with prompts to annotate. Safe to run again.

Unless --no-model: the demo policy (training/engine/demo.py: the tiny model, fine-tuned on a synthetic chat
corpus, about a minute on a CPU, built once under ARBITER_ARTIFACTS_ROOT) is registered as the project's active
policy, and its samples for 40 more prompts are queued as tasks, the way a round's samples are. A lead can then
launch a round in the admin and watch its new samples arrive in the queue, with no GPU and no model hub.
"""

import os
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractUser
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from annotate.importing import import_file
from annotate.leads import project_leads_group
from annotate.models import Membership, Project, Prompt
from models_registry.models import ModelVersion

DEMO_FILE = Path(__file__).resolve().parents[2] / "demo" / "prompts.jsonl"
DEFAULT_PASSWORD = "arbiter-demo"
DEMO_MODEL_PROMPTS = 40

GUIDELINES = """\
# How to judge responses

Read the prompt, then every response, before you answer.

- **Correct first.** A confident wrong answer is worse than a short right one.
- **Helpful next.** Prefer the response that does what was asked, at the length it needs.
- **Safe always.** Tick *unsafe* for anything that could hurt someone who follows it.

When two responses are equally good (or equally bad), say so: a tie is an honest answer.
"""


class Command(BaseCommand):
    help = "Create demo users, a demo project and its prompts. Idempotent. Refuses to run with DEBUG off."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--force", action="store_true", help="Run even with DEBUG off (it creates users with a known password)."
        )
        parser.add_argument("--no-model", action="store_true", help="Skip the demo policy and its samples.")
        parser.add_argument("--port", type=int, default=8000, help="The port the server will listen on (for the URLs).")

    def handle(self, *args: Any, force: bool, no_model: bool = False, port: int = 8000, **options: Any) -> None:
        if not settings.DEBUG and not force:
            raise CommandError("DEBUG is off: demo users with a known password do not belong here. Use --force.")
        password = os.environ.get("DEMO_PASSWORD", DEFAULT_PASSWORD)
        with transaction.atomic():
            lead = _demo_user("lead", password, is_staff=True)
            lead.groups.add(project_leads_group())
            annotators = [_demo_user(name, password) for name in ("annotator1", "annotator2")]
            project = _demo_project()
            Membership.objects.get_or_create(project=project, user=lead, defaults={"role": Membership.Role.LEAD})
            for annotator in annotators:
                Membership.objects.get_or_create(project=project, user=annotator)
            # Re-importing is a no-op, so a second run adds nothing, and an extended demo file adds its new rows.
            result = import_file(project, DEMO_FILE, format="responses")
            self.stdout.write(f"Imported {DEMO_FILE.name}: {result}")

        if not no_model:
            self._seed_policy(project)

        url = f"http://127.0.0.1:{port}/"
        self.stdout.write(self.style.SUCCESS(f"\nDemo ready. Open {url} and log in as:\n"))
        for user, role in [(lead, "project lead, can open the admin"), *((a, "annotator") for a in annotators)]:
            self.stdout.write(f"  {user.username:<12} password: {password:<16} ({role})")
        self.stdout.write(f"\nAdmin: {url}admin/    Project page: {url}p/{project.slug}/")

    def _seed_policy(self, project: Project) -> None:
        from training.engine.config import SampleConfig
        from training.engine.demo import build_demo_policy, demo_prompts
        from training.sampling import sample_into_queue

        if ModelVersion.objects.filter(project=project, kind=ModelVersion.Kind.POLICY).exists():
            return
        path = Path(settings.ARBITER_ARTIFACTS_ROOT) / "demo-model" / "policy"
        if not (path / "config.json").is_file():
            self.stdout.write(
                "Building the demo policy, once (about a minute on a CPU): the tiny model, fine-tuned on a synthetic "
                "corpus…"
            )
            build_demo_policy(path.parent, progress=self._training_progress)
        with transaction.atomic():
            for number, messages in enumerate(demo_prompts(DEMO_MODEL_PROMPTS)):
                Prompt.objects.get_or_create(
                    project=project,
                    external_id=f"demo-model-{number:03d}",
                    defaults={"messages": messages, "split": "eval" if number % 4 == 0 else "train"},
                )
            policy = ModelVersion.register(project=project, kind=ModelVersion.Kind.POLICY, base_model=str(path))
            policy.promote()
            self.stdout.write(f"Sampling {policy}'s answers to {DEMO_MODEL_PROMPTS} prompts for the queue…")
            made = sample_into_queue(
                project,
                policy,
                round_number=0,
                config=SampleConfig(max_new_tokens=48),
                progress=self._sampling_progress,
            )
        self.stdout.write(f"Registered {policy} ({path}); queued {made['tasks']} tasks over its samples")

    def _training_progress(self, step: int, total: int, metrics: dict[str, float]) -> bool:
        if metrics or step == total:  # a line per logging step (every 50), not per step
            loss = f", loss {metrics['loss']:.3f}" if "loss" in metrics else ""
            self.stdout.write(f"  fine-tuning: step {step} of {total}{loss}")
        return False  # never stop

    def _sampling_progress(self, done: int, total: int) -> bool:
        self.stdout.write(f"  sampled {done} of {total} answers")
        return False


def _demo_user(username: str, password: str, **flags: bool) -> AbstractUser:
    # The password is set on every run, so the logins printed at the end are always the ones that work.
    user, _ = get_user_model().objects.get_or_create(username=username, defaults=flags)
    for name, value in flags.items():
        setattr(user, name, value)
    user.set_password(password)
    user.save()
    return user


def _demo_project() -> Project:
    project, _ = Project.objects.get_or_create(
        slug="demo",
        defaults={
            "name": "Demo: helpful and harmless",
            "guidelines": GUIDELINES,
            "overlap": 2,
            "rating_min": 1,
            "rating_max": 5,
            "rating_descriptions": {
                "1": "Wrong, harmful or off-topic",
                "2": "Mostly unhelpful, or has a serious error",
                "3": "Acceptable, with flaws",
                "4": "Good: correct and helpful",
                "5": "Ideal: what an expert would write",
            },
            "labels": ["factual error", "unsafe", "off-topic", "too long", "too terse"],
        },
    )
    return project
