from pathlib import Path

from django.core.management.base import BaseCommand, CommandParser

from training.engine.tiny import build_tiny_models


class Command(BaseCommand):
    help = (
        "Build a tiny tokenizer, policy and reward model (random weights, for tests and demos) into "
        "<dir>/policy and <dir>/reward."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("dir", type=Path)
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument(
            "--corpus", type=Path, action="append", default=[], help="A text file to train the tokenizer on as well."
        )

    def handle(self, *args: object, dir: Path, seed: int, corpus: list[Path], **options: object) -> None:
        texts = [line for path in corpus for line in path.read_text(encoding="utf-8").splitlines()]
        paths = build_tiny_models(dir, corpus=texts, seed=seed)
        self.stdout.write(self.style.SUCCESS(f"Policy in {paths.policy}, reward model in {paths.reward}."))
