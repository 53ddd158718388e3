import argparse

from django.core.management.base import BaseCommand, CommandError, CommandParser, DjangoHelpFormatter

from annotate import simulation
from annotate.models import Project


class _HelpFormatter(DjangoHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Keeps the rules' layout in --help."""


class Command(BaseCommand):
    help = (
        "Run N simulated annotators at once, each a token-authenticated client of the real HTTP API that\n"
        "answers by a hidden rule, and print what they did. Without --url the project's own WSGI app is\n"
        "served on 127.0.0.1 for them; a --url server must use this database (the bots' tokens are made here).\n\n"
        "Rules" + simulation.__doc__.partition("Rules")[2]
    )

    def create_parser(self, prog_name: str, subcommand: str, **kwargs: object) -> CommandParser:
        return super().create_parser(prog_name, subcommand, formatter_class=_HelpFormatter, **kwargs)

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--project", required=True, help="the project's slug")
        parser.add_argument("--users", required=True, type=int, help="how many bots (sim-<project>-1 …)")
        parser.add_argument("--rule", required=True, help="word:<w>, shorter or longer")
        parser.add_argument("--noise", type=float, default=0.0, help="chance of a random answer, 0-1 (default 0)")
        parser.add_argument("--url", help="a running server on this database, e.g. http://127.0.0.1:8000")
        parser.add_argument("--per-user", type=int, help="stop each bot after this many tasks")
        parser.add_argument("--seconds", type=float, help="stop taking tasks after this long")
        parser.add_argument("--seed", type=int, help="seed the bots' random draws")
        parser.add_argument(
            "--profile",
            action="append",
            default=[],
            metavar="PROFILE=N",
            help="N bots of this profile (spammer, fast, position:<p>, length:<p>); repeatable; the rest are careful",
        )
        parser.add_argument(
            "--think",
            type=float,
            default=0.0,
            help="seconds each bot but the fast ones spends on each task (default 0)",
        )

    def handle(self, *args: object, **options: object) -> None:
        project = Project.objects.filter(slug=options["project"]).first()
        if project is None:
            raise CommandError(f"No project {options['project']!r}.")
        if options["users"] < 1:
            raise CommandError("--users must be at least 1.")
        if not 0 <= options["noise"] <= 1:
            raise CommandError("--noise must be between 0 and 1.")
        if options["per_user"] is not None and options["per_user"] < 1:
            raise CommandError("--per-user must be at least 1.")
        if options["seconds"] is not None and options["seconds"] <= 0:
            raise CommandError("--seconds must be more than 0.")
        if options["think"] < 0:
            raise CommandError("--think must be 0 or more.")
        try:
            simulation.check_rule(options["rule"])
            profiles = [profile for given in options["profile"] for profile in _profiles(given)]
        except ValueError as error:
            raise CommandError(str(error)) from None
        if len(profiles) > options["users"]:
            raise CommandError(f"--profile asks for {len(profiles)} bots, more than --users {options['users']}.")
        result = simulation.simulate_annotators(
            project=project,
            users=options["users"],
            rule=options["rule"],
            noise=options["noise"],
            url=options["url"],
            per_user=options["per_user"],
            seconds=options["seconds"],
            seed=options["seed"],
            profiles=profiles,
            think=options["think"],
        )
        self.stdout.write(f"Simulated annotators on {project.slug}, rule {options['rule']}, noise {options['noise']}")
        for line in result.summary():
            self.stdout.write(line)
        if result.tally.errors:
            raise CommandError(f"Bots failed: {len(result.tally.errors)} (see the errors above).")


def _profiles(given: str) -> list[simulation.Profile]:
    """`spammer=2` → two spammer profiles; ValueError naming what is wrong."""
    name, sep, count = given.rpartition("=")
    if not sep or not count.isdecimal() or int(count) < 1:
        raise ValueError(f"--profile {given!r}: use PROFILE=N with N a whole number from 1, e.g. spammer=2.")
    return [simulation.check_profile(name)] * int(count)
