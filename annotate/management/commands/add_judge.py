from pathlib import Path

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from annotate.models import Judge, Project
from models_registry.models import ModelVersion

# The model's field names as this command's options, for its error messages.
OPTIONS = {"model_version": "--reward-model", "endpoint": "--endpoint", "model_name": "--model", "name": "name"}


class Command(BaseCommand):
    help = (
        "Add a judge to a project: a reward model from its registry, or an LLM behind an OpenAI-compatible chat "
        "endpoint told the project's guidelines and a rubric. Run it with run_judge."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("project_slug")
        parser.add_argument("name", help="unique in the project: letters, digits, - and _")
        kind = parser.add_mutually_exclusive_group(required=True)
        kind.add_argument("--reward-model", metavar="VERSION", help="a reward model of the project (reward-v2)")
        kind.add_argument("--endpoint", metavar="URL", help="an OpenAI-compatible base URL, ending in /v1")
        llm = parser.add_argument_group("an LLM judge")
        llm.add_argument("--model", help="the model the endpoint serves (required with --endpoint)")
        llm.add_argument("--rubric", type=Path, metavar="FILE", help="a rubric or short constitution (UTF-8 text)")
        llm.add_argument("--api-key-env", default="", metavar="VAR", help="the variable holding the API key")
        llm.add_argument("--concurrency", type=int, default=8, help="requests in flight at once (default 8)")
        llm.add_argument("--requests-per-minute", type=int, default=0, help="rate limit (default 0: none)")

    def handle(self, *args: object, project_slug: str, name: str, **options: object) -> None:
        project = Project.objects.filter(slug=project_slug).first()
        if project is None:
            raise CommandError(f"No project {project_slug!r}.")
        if options["reward_model"]:
            if any(options[flag] for flag in ("model", "rubric", "api_key_env", "requests_per_minute")):
                raise CommandError("--model, --rubric, --api-key-env and --requests-per-minute are for an LLM judge.")
            version = ModelVersion.objects.named(project, ModelVersion.Kind.REWARD, options["reward_model"])
            if version is None:
                raise CommandError(f"--reward-model: no reward model {options['reward_model']!r} in {project.slug}.")
            fields = {"kind": Judge.Kind.REWARD_MODEL, "model_version": version}
        else:
            fields = {
                "kind": Judge.Kind.LLM,
                "endpoint": options["endpoint"],
                "model_name": options["model"] or "",
                "rubric": _read(options["rubric"]) if options["rubric"] else "",
                "api_key_env": options["api_key_env"],
                "concurrency": options["concurrency"],
                "requests_per_minute": options["requests_per_minute"],
            }
        try:
            judge = Judge.create(project, name, **fields)
        except ValidationError as error:
            raise CommandError(
                "; ".join(f"{OPTIONS.get(field, '--' + field.replace('_', '-'))}: {' '.join(messages)}"
                          for field, messages in error)
            ) from None  # fmt: skip
        self.stdout.write(self.style.SUCCESS(f"Added {judge} to {project.slug}; it answers as {judge.user.username}"))


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise CommandError(f"--rubric: cannot read {path}: {error}") from None
