from pathlib import Path

from django.core.management.base import BaseCommand, CommandError, CommandParser

from training.engine.tiny import build_tiny_models, build_tiny_models_like


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
        parser.add_argument(
            "--like",
            type=Path,
            help="A model folder whose real tokenizer, chat template, special tokens, generation config and "
            "(shrunk) architecture to use instead of the bundled ones.",
        )
        parser.add_argument(
            "--model-type",
            help="With --like, the architecture (a transformers model type, e.g. phi3) when the folder has no "
            "config.json; a Llama when neither says.",
        )

    def handle(
        self,
        *args: object,
        dir: Path,
        seed: int,
        corpus: list[Path],
        like: Path | None,
        model_type: str | None,
        **options: object,
    ) -> None:
        if like is not None:
            if corpus:
                raise CommandError("--corpus trains the bundled tokenizer; --like uses the folder's own")
            try:
                paths = build_tiny_models_like(dir, like, seed=seed, model_type=model_type)
            except (OSError, ValueError) as error:
                raise CommandError(str(error)) from error
            if not (like / "config.json").is_file() and not model_type:
                self.stdout.write(f"{like} has no config.json: the models are a tiny Llama with its tokenizer.")
        elif model_type:
            raise CommandError("--model-type says what to build --like a folder without config.json")
        else:
            texts = [line for path in corpus for line in path.read_text(encoding="utf-8").splitlines()]
            paths = build_tiny_models(dir, corpus=texts, seed=seed)
        self.stdout.write(self.style.SUCCESS(f"Policy in {paths.policy}, reward model in {paths.reward}."))
