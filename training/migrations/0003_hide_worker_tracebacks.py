"""Rounds that failed before errors were written for leads kept the worker's traceback (server paths, code) in
their error and log tail, both of which leads read: keep the error's message with paths hidden, and the tail's log
lines without the traceback lines between them."""

import re

from django.db import migrations

TRACEBACK = "\n\nTraceback (most recent call last):"
# training.rounds hides paths so today; a migration keeps its own copy of what it ran with.
PATH = re.compile(r"(?<![\w.~/-])(?:~|\.{1,2})?/[^\s'\"`,;()\[\]<>]+")
LOG_LINE = re.compile(r"\d\d:\d\d:\d\d [A-Z]+ ")  # _LogTail's "%H:%M:%S LEVEL name: message"


def hide_tracebacks(apps, schema_editor):
    TrainingRound = apps.get_model("training", "TrainingRound")
    for training_round in TrainingRound.objects.filter(error__contains=TRACEBACK):
        message = training_round.error.split(TRACEBACK, 1)[0]
        training_round.error = PATH.sub("<path>", " ".join(message.split()))[:500]
        lines = training_round.log_tail.splitlines()
        training_round.log_tail = "\n".join(line for line in lines if LOG_LINE.match(line))
        training_round.save(update_fields=["error", "log_tail"])


class Migration(migrations.Migration):
    dependencies = [
        ("training", "0002_sampling_settings"),
    ]

    operations = [
        migrations.RunPython(hide_tracebacks, migrations.RunPython.noop),
    ]
