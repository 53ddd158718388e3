"""Export a project's annotations as datasets that Hugging Face `datasets` and TRL's trainers take as they are.

The one export path: the admin, `manage.py export_dataset`, the API and the Celery task all call
`create_snapshot` (check the settings, save a pending DatasetSnapshot) and then `run_snapshot` (write the file,
record its row count and sha256); the admin and the API through `queue_export`, which holds each project to
ARBITER_MAX_ACTIVE_EXPORTS under way and hands the snapshot to a worker. While it runs, a heartbeat thread says its
worker is alive (annotate/jobs.py) and the file grows at MEDIA_ROOT/exports/tmp/<id>.<format>.part, renamed into
place when done; `fail_stale_exports` (beat) fails a running export whose worker died and removes its part file.
Kinds:

- pairs:    TRL's prompt / chosen / rejected (reward models, DPO): one row per pair of responses a task's votes
            decide, with margin, vote counts, agreement, the task, the responses and the model versions that
            wrote them (null for imported or human responses). `pair_source` says what decided it: "votes" (pairwise
            and ranking tasks), "ratings" (ratings_as_pairs) or "correction" (an annotator's better answer to a rated
            response, over that response: one pair per correction, margin 1, one vote, no agreement).
- unpaired: TRL's KTO form prompt / completion / label: one row per rated response, `score` its mean rating
            over `ratings` ratings, label = score above the scale's midpoint (a mean exactly at the midpoint is
            labelled false: only better than middling counts as desirable; filter on `score` to drop those).
            For a rating reward model: `scaled_score`, the mean on [0, 1] (rating_min → 0, rating_max → 1), and
            `label_shares`, per project label in the project's order, the share of those ratings that ticked it.
- votes:    one row per annotation with every field (`written`: a write task's answer, a rating's better
            answer). Annotators are pseudonymised (the first 16 hex digits of HMAC-SHA256 of their user id, keyed
            with SECRET_KEY: stable while the key is) unless reveal_annotators asks for usernames.
- sft:      `messages` ending in a preferred response (the chosen side of every pair a pairs export with the
            same filters would hold; ties and both-bad pairs never) or a human-written one (a write task's answer,
            a correction, an imported demonstration), once per (prompt, response). TRL's SFTTrainer takes it as it
            is, and annotate/importing.py reads it back as demonstrations.

Votes on a pair are read, added up and decided by the vote model, annotate/votes.py: a pair is two responses of one
task, a first in the task's positions; a pairwise answer votes +strength for a, -strength for b, 0 for a tie
(strength: 1 "better", 2 "much better"); a ranking votes on every pair of its task's responses, 1 for the better of
the two or a tie vote where it ranks them equal (so a ranking that ties two responses lowers the agreement on them,
and one alone makes their pair a tie). The sign of the sum picks the winner; agreement = the share of votes on the
winning side (for a tie, the share of tie votes). A sum of 0 is a tie, and a pair most of whose votes say "both bad"
is both_bad: both are left out unless include_ties / include_both_bad keep them, flagged in the `tie` / `both_bad`
columns (a kept tie lists response a as chosen). With ratings_as_pairs, two rated responses to one prompt whose mean
scores differ make a pair as well, after the prompt's task pairs: votes = the ratings behind both; they have no task,
no per-side votes and no agreement (min_agreement leaves them be). Imported annotations are votes like any other.
Automatic ties (source "auto": an eval pair whose two answers are the same text, recorded by training/sampling.py)
are not: no pairs or sft row comes of them, even with include_ties; the votes kind lists them, with their source
and no annotator.

`margin` is one scale, from 0 to 2, for every pair: for votes, |sum| / votes, the mean strength towards the
chosen side (1: "better" on average, 2: every vote "much better", 0 for a tie); for ratings, the difference of
the two means over the scale's width, times 2 (ratings at the two ends of the scale: 2; half the scale apart:
1). TRL's RewardTrainer subtracts it inside the loss, -log σ(r(x, chosen) - r(x, rejected) - margin).

Styles: conversational (the prompt is the message list, a completion is [{"role": "assistant", "content": …}])
or standard (strings; sft gives prompt / completion then instead of messages). A standard prompt is the whole
transcript, every message as "role: content" and a blank line, then STANDARD_ANSWER ("assistant:" and a line
break), even for a single user message. TRL's trainers join a standard prompt and its completion with nothing
between (prompt + chosen), so the prompt ends with the turn the answer takes: the answer starts on a line of
its own instead of running into the question, as it would after a chat template's generation prompt; and as
the line break ends a token for byte-level BPE tokenizers, the tokenized prompt stays a prefix of the tokenized
prompt + completion, which DPOTrainer relies on to find where the completion starts.

Filters narrow what counts: split (the prompt's), round (the task's round_number), since / until (the
annotation's created_at, since <= created_at < until; a date means midnight UTC, a time without zone is UTC),
annotator (username: only that person's annotations), min_agreement (pairs and sft). For sft's human-written
responses, split and round (a task of that round holds the response, or it answers one) apply, since / until to
when the response was written, annotator to its author (an imported demonstration has none), and an excluded
member's are left out.

Rows are ordered by prompt, then task, then pair (by task positions) or annotation, and hold nothing that
depends on when or where the export ran, so the same data and options give the same bytes and sha256 (JSON
Lines: compact UTF-8 from orjson; Parquet: with the same pyarrow). Prompts are read CHUNK_SIZE at a time, each
chunk with a few short queries over id ranges (plain SQL, index range scans): memory stays flat whatever the
size (but for the Parquet footer's metadata, a row group per CHUNK_SIZE rows: some 10 MB a million rows), the
first row is written after the first chunk, and no transaction or server-side cursor stays open, so progress
(rows_written) is visible while it runs. (On PostgreSQL, Django's .iterator() outside a transaction declares a
WITH HOLD cursor, which the server materialises in full before the first row.) A project that changes during an
export is read chunk by chunk, each as it was when it was read. On PostgreSQL, READERS threads read the next
chunks, each on a connection of its own, while this one turns a chunk into rows; on either database another thread
writes and hashes the batch before.

Two settings reach past the export to the whole process, each worth its cost in BENCHMARKS.md: run_snapshot
pauses the garbage collector's cycle detection (in every thread) until it returns, and importing this module makes
jemalloc pyarrow's allocator (unless one is set already), for every user of pyarrow in the process and in the
processes it starts.
"""

import contextlib
import gc
import hashlib
import hmac
import logging
import os
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import partial
from itertools import combinations, groupby
from operator import itemgetter
from time import monotonic
from typing import IO, TYPE_CHECKING, Any, NamedTuple

import orjson
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.files import File
from django.db import connection, models, transaction
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from annotate.jobs import Heartbeat, fail_stale, hide_paths
from annotate.models import (
    Annotation,
    Assignment,
    DatasetSnapshot,
    Judge,
    Project,
    Prompt,
    QuotaReached,
    Response,
    Task,
    TaskKind,
    TaskResponse,
)
from annotate.votes import Decision, Tally, Vote, decide, pairwise_vote, ranking_votes, tally, tally_rankings

if TYPE_CHECKING:
    import pyarrow as pa

    from annotate.aggregation import SideModel

logger = logging.getLogger(__name__)

# pyarrow's allocator: jemalloc gives freed memory back to the system, where the default, mimalloc, keeps what each
# Parquet batch freed, some 20 MB more at an export's peak (BENCHMARKS.md). Arrow reads the variable once, at its
# first allocation, and keeps that pool for the whole process; a pool handed to read_json and ParquetWriter would
# not do instead, as the Parquet encoders still take the default one. So it is set on import, as early as this
# module can; a value already set wins, and child processes inherit it. pyarrow without jemalloc (Windows) warns
# and keeps its default.
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "jemalloc")

CHUNK_SIZE = 1000  # prompts read per round of queries; rows per write (and per Parquet row group)
READERS = 2  # chunks read at once on PostgreSQL, each by a thread with a connection of its own
# rows_written is recorded at most this often while an export runs: an UPDATE for every chunk took an eighth of the
# main thread's time at 1M pairs on PostgreSQL (BENCHMARKS.md).
PROGRESS_SECONDS = 1.0
STANDARD_ANSWER = "assistant:\n"  # ends every standard-style prompt: the turn the completion answers

Kind = DatasetSnapshot.Kind
Format = DatasetSnapshot.Format
Style = DatasetSnapshot.Style
Status = DatasetSnapshot.Status


class Votes(models.TextChoices):
    HUMAN = "human", "People's (and imported) answers only"
    JUDGE = "judge", "Judges' answers only"
    BOTH = "both", "Both, each judge's vote weighted by its measured agreement with people"


class Aggregation(models.TextChoices):
    MAJORITY = "majority", "Majority: the side with the larger sum of votes"
    DAWID_SKENE = "dawid-skene", "Dawid–Skene: the most probable side, each voter weighed by their reliability"


@dataclass(frozen=True)
class ExportOption:
    default: Any
    kinds: tuple[str, ...]  # the kinds it applies to; any other refuses a value other than the default
    help: str


EXPORT_OPTIONS: dict[str, ExportOption] = {
    "split": ExportOption(None, tuple(Kind.values), "Only prompts of this split: train or eval."),
    "round": ExportOption(None, tuple(Kind.values), "Only tasks of this training round (a whole number)."),
    "since": ExportOption(
        None, tuple(Kind.values), "Only annotations made at or after this date or time (ISO 8601; UTC if no zone)."
    ),
    "until": ExportOption(None, tuple(Kind.values), "Only annotations made before this date or time (ISO 8601)."),
    "annotator": ExportOption(None, tuple(Kind.values), "Only this annotator's annotations (username)."),
    "min_agreement": ExportOption(
        None, (Kind.PAIRS, Kind.SFT), "Leave out pairs whose voters agree less than this (0 to 1)."
    ),
    "votes": ExportOption(
        Votes.HUMAN,
        tuple(Kind.values),
        "Whose answers: human (people's and imported ones; judges' never), judge (judges' only), or both (a judge's "
        "vote weighted by its measured agreement with people).",
    ),
    "aggregation": ExportOption(
        Aggregation.MAJORITY,
        (Kind.PAIRS, Kind.SFT),
        "How a pair's votes are decided: majority, or dawid-skene (the most probable side given how reliable each "
        "voter is; agreement is its probability).",
    ),
    "include_ties": ExportOption(False, (Kind.PAIRS,), "Keep tied pairs, marked tie=true."),
    "include_both_bad": ExportOption(
        False, (Kind.PAIRS,), "Keep pairs most voters flagged both bad, marked both_bad=true."
    ),
    "ratings_as_pairs": ExportOption(
        False, (Kind.PAIRS, Kind.SFT), "Also pair rated responses to one prompt whose mean scores differ."
    ),
    "reveal_annotators": ExportOption(False, (Kind.VOTES,), "Usernames instead of pseudonyms."),
}


def create_snapshot(
    project: Project,
    *,
    kind: str,
    format: str = Format.JSONL,
    style: str = Style.CONVERSATIONAL,
    filters: Mapping[str, Any] | None = None,
    user: Any = None,
) -> DatasetSnapshot:
    """Check an export's settings (ValidationError keyed by field) and save it as a pending snapshot."""
    for name, value, choices in (("kind", kind, Kind), ("format", format, Format), ("style", style, Style)):
        if value not in choices.values:
            raise ValidationError({name: f"Must be one of {', '.join(choices.values)}, not {value!r}."})
    options = _clean_options(project, kind, filters if filters is not None else {})
    return DatasetSnapshot.objects.create(
        project=project,
        kind=kind,
        format=format,
        style=style,
        filters=options,
        judge_weights=_judge_weights(project, kind, options),
        created_by=user,
    )


def _weighs_judges(kind: str, options: Mapping[str, Any]) -> bool:
    """Whether judges' votes are weighted: votes=both, where votes are added up by majority (pairs and sft) or
    averaged (unpaired). The votes kind lists answers; Dawid–Skene weighs a judge, as any voter, by its fit."""
    if options["votes"] != Votes.BOTH or kind == Kind.VOTES:
        return False
    return kind == Kind.UNPAIRED or options["aggregation"] == Aggregation.MAJORITY


def _judge_weights(project: Project, kind: str, options: Mapping[str, Any]) -> dict[str, float] | None:
    """Each judge that answered in the project, by name, with its weight (annotate/votes.py), where judges' votes are
    weighted; ValidationError where a judge has no measured agreement yet."""
    if not _weighs_judges(kind, options):
        return None
    from annotate.judge_quality import measured_agreement

    weights = {}
    for judge in project.judges.filter(Exists(Annotation.objects.filter(annotator=OuterRef("user_id")))):
        if (weight := measured_agreement(judge)) is None:
            raise ValidationError(
                {
                    "votes": f"Judge {judge.name} has no measured agreement with people yet (no pairwise or rating "
                    "task that people and it both answered), so its votes have no weight: let people answer some of "
                    "the tasks it answered, or export votes=human or judge."
                }
            )
        weights[judge.name] = weight
    return weights


def _judge_voters(snapshot: DatasetSnapshot) -> dict[int, float]:
    """The weighted judges' user ids and weights: those recorded on the snapshot (a judge added since counts not)."""
    if snapshot.judge_weights is None:
        return {}
    judges = Judge.objects.filter(project=snapshot.project_id, name__in=snapshot.judge_weights)
    return {user_id: snapshot.judge_weights[name] for name, user_id in judges.values_list("name", "user_id")}


def queue_export(project: Project, *, user: Any, **options: Any) -> DatasetSnapshot:
    """An export a person asked for (the admin, the API): checked as create_snapshot checks it, saved while the
    project has fewer than ARBITER_MAX_ACTIVE_EXPORTS under way (QuotaReached otherwise), and sent to a worker
    once committed. Rounds' snapshots are not counted: ARBITER_MAX_ACTIVE_ROUNDS bounds those."""
    from annotate.tasks import export_snapshot  # annotate.tasks imports this module

    with transaction.atomic():
        project.lock()  # two requests at once cannot both take the last place
        under_way = project.snapshots.filter(status__in=[Status.PENDING, Status.RUNNING], training_rounds=None)
        if (active := under_way.count()) >= settings.ARBITER_MAX_ACTIVE_EXPORTS:
            raise QuotaReached(
                f"{project.slug} has {active} exports pending or running, the most allowed "
                "(ARBITER_MAX_ACTIVE_EXPORTS): wait for one to finish."
            )
        snapshot = create_snapshot(project, user=user, **options)
        transaction.on_commit(lambda: export_snapshot.delay(snapshot.pk))
    return snapshot


def run_snapshot(snapshot: DatasetSnapshot) -> DatasetSnapshot:
    """Write a pending snapshot's file and mark it ready, or failed with the error; returns the snapshot.

    A snapshot runs once: one that is no longer pending (a message delivered twice, or again after its worker died
    mid-export, whose snapshot fail_stale_exports fails) is returned as it is. While it runs, a heartbeat says its
    worker is alive, and the file grows at its part_path, renamed into place when done.
    """
    if not snapshot.claim():
        snapshot.refresh_from_db()
        return snapshot
    part = snapshot.part_path
    heartbeat = Heartbeat(snapshot.beat, settings.ARBITER_JOB_HEARTBEAT_SECONDS, name=f"heartbeat-export-{snapshot.pk}")
    try:
        with heartbeat, _no_cycle_collection():
            part.parent.mkdir(parents=True, exist_ok=True)
            with part.open("wb") as out:
                row_count, sha256 = _write(snapshot, _rows(snapshot), out)
            name = f"{snapshot.project.slug}-{snapshot.kind}-{snapshot.pk}.{snapshot.format}"
            snapshot.file.save(name, _PartFile(None, str(part)), save=False)
    except Exception as error:
        # Whatever went wrong belongs on the snapshot, where the admin, the API and the command look for it.
        logger.exception("Export %s failed", snapshot.pk)
        with contextlib.suppress(OSError):  # what was written before the error, if anything was
            part.unlink()
        if not snapshot.finish(Status.FAILED, error=hide_paths(str(error) or repr(error))):
            snapshot.refresh_from_db()  # the reaper failed it first (and removed the part file from under it)
        return snapshot
    fields = {"row_count": row_count, "rows_written": row_count, "sha256": sha256, "file": snapshot.file.name}
    if not snapshot.finish(Status.READY, **fields):
        # The reaper failed it meanwhile (its heartbeat was late): the file belongs to no ready snapshot.
        snapshot.file.delete(save=False)
        snapshot.refresh_from_db()
    return snapshot


def fail_stale_exports() -> int:
    """Fail running exports whose worker stopped sending heartbeats (killed, out of memory, machine lost), and remove
    the part of the file it wrote; returns how many (Celery beat runs this every minute)."""
    failed = fail_stale(
        DatasetSnapshot.objects.all(),
        timeout=settings.ARBITER_JOB_HEARTBEAT_TIMEOUT,
        message="The worker stopped sending heartbeats (last at {seen}): it was killed or lost its machine. "
        "Start the export again.",
    )
    for snapshot in failed:
        snapshot.part_path.unlink(missing_ok=True)
    return len(failed)


class _PartFile(File):
    """A finished part file, which FileSystemStorage moves into place (a rename on one file system), not copies."""

    def temporary_file_path(self) -> str:
        return self.name


@contextlib.contextmanager
def _no_cycle_collection() -> Iterator[None]:
    """Pause the garbage collector's cycle detection while an export runs (the process's, so every thread's).

    An export allocates millions of short-lived rows, tuples and dicts, none of them in a cycle, and each few
    hundred allocations set off a collection that walks the young objects (and now and then everything Django
    holds): about a third of an export's time (BENCHMARKS.md). Reference counting still frees every row; the
    collector is switched back on afterwards, on error too, if it was on before.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


# Options ------------------------------------------------------------------------------------------


def _clean_options(project: Project, kind: str, filters: Mapping[str, Any]) -> dict[str, Any]:
    """Every option, checked and with its default filled in, as stored on the snapshot (times as ISO text)."""
    if not isinstance(filters, Mapping):
        raise ValidationError({"filters": "Give the filters as an object."})
    if unknown := sorted(set(filters) - set(EXPORT_OPTIONS)):
        raise ValidationError({unknown[0]: f"Not an export option (expected one of {', '.join(EXPORT_OPTIONS)})."})
    options = {}
    for name, option in EXPORT_OPTIONS.items():
        value = filters.get(name)
        value = option.default if value is None or value == "" else _clean_option(project, name, value)
        if value != option.default and kind not in option.kinds:
            raise ValidationError({name: f"Applies to {' and '.join(option.kinds)} exports, not {kind}."})
        options[name] = value
    if options["since"] and options["until"] and options["since"] >= options["until"]:
        raise ValidationError({"until": "Must be later than since."})
    annotator = options["annotator"]
    if annotator and options["votes"] == Votes.HUMAN and project.judges.filter(user__username=annotator).exists():
        raise ValidationError({"annotator": f"{annotator} is a judge: export votes=judge or both."})
    for name in ("since", "until"):
        options[name] = options[name] and options[name].isoformat()
    return options


def _clean_option(project: Project, name: str, value: Any) -> Any:
    if name == "split":
        if value not in Prompt.Split.values:
            raise ValidationError({name: f"Must be one of {', '.join(Prompt.Split.values)}, not {value!r}."})
        return value
    if name == "round":
        if isinstance(value, str) and value.strip().isdecimal():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValidationError({name: f"Must be a whole number from 0, not {value!r}."})
        return value
    if name in ("since", "until"):
        return _clean_time(name, value)
    if name == "annotator":
        if not isinstance(value, str):
            raise ValidationError({name: f"Must be a username, not {value!r}."})
        known = project.memberships.filter(user__username=value).exists() or (
            Annotation.objects.filter(task__project=project, annotator__username=value).exists()
        )
        if not known:
            raise ValidationError({name: f"No annotator {value!r} in {project.slug}."})
        if project.memberships.filter(user__username=value, votes_excluded=True).exists():
            raise ValidationError({name: f"{value}'s votes are excluded from {project.slug}'s data: none to export."})
        return value
    if name in ("aggregation", "votes"):
        choices = Aggregation if name == "aggregation" else Votes
        if value not in choices.values:
            raise ValidationError({name: f"Must be one of {', '.join(choices.values)}, not {value!r}."})
        return value
    if name == "min_agreement":
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
            raise ValidationError({name: f"Must be a number from 0 to 1, not {value!r}."})
        return float(value)
    if not isinstance(value, bool):
        raise ValidationError({name: f"Must be true or false, not {value!r}."})
    return value


def _clean_time(name: str, value: Any) -> datetime:
    if isinstance(value, str):
        with contextlib.suppress(ValueError):  # well formed but impossible, e.g. 2026-02-30
            value = parse_datetime(value) or parse_date(value) or value
    if isinstance(value, date) and not isinstance(value, datetime):
        value = datetime.combine(value, time(), tzinfo=UTC)
    if not isinstance(value, datetime):
        raise ValidationError({name: f"Must be an ISO 8601 date or date and time, not {value!r}."})
    return value if timezone.is_aware(value) else value.replace(tzinfo=UTC)


# Reading ------------------------------------------------------------------------------------------


class _Response(NamedTuple):
    id: int
    content: str
    model_version: int | None
    source: str


class _Prompt(NamedTuple):
    external_id: str
    messages: list[dict[str, str]]
    split: str


class _Task(NamedTuple):
    prompt_id: int
    kind: str
    round_number: int


@dataclass
class _Chunk:
    """CHUNK_SIZE prompts and what an export needs of them."""

    prompts: dict[int, _Prompt]  # by id, in id order
    responses: dict[int, _Response]  # every response to them, by id
    tasks: dict[int, _Task]  # their tasks of the kinds (and round) asked for, by prompt, then id
    task_responses: dict[int, list[_Response]]  # by task, in position order
    annotations: dict[int, list[tuple]]  # the annotations the filters let through, by task, in id order


# The answers the pairs, unpaired and sft kinds read; the votes kind reads every field (_VOTE_COLUMNS).
_ANSWER_COLUMNS = (
    "a.task_id, a.score, a.choice, a.strength, a.both_bad, a.ranking, a.annotator_id, a.written_response_id"
)
_LABELS = _ANSWER_COLUMNS.count(",") + 1  # where the unpaired kind's a.labels sits in a row, after them
_VOTE_COLUMNS = (
    "a.task_id, a.id, a.source, a.annotator_id, u.username, a.score, a.labels, a.choice, a.strength, a.both_bad,"
    " a.ranking, w.content, a.comment, a.time_spent, s.shown_order, a.created_at"
)


class _Sql:
    """The tables and the snapshot's filters as SQL conditions, built once: a chunk's queries add only id ranges.

    Plain SQL on a cursor rather than querysets: at a million rows, building querysets for every chunk and Django's
    converters on every value cost more than the queries (BENCHMARKS.md). JSON columns come back as text from both
    databases (Django's psycopg setup loads jsonb as text) and are parsed here.
    """

    def __init__(self, snapshot: DatasetSnapshot) -> None:
        options = snapshot.filters
        self.prompt, self.response = Prompt._meta.db_table, Response._meta.db_table
        self.task, self.task_response = Task._meta.db_table, TaskResponse._meta.db_table
        self.annotation, self.user = Annotation._meta.db_table, get_user_model()._meta.db_table
        kinds = {
            Kind.PAIRS: [TaskKind.PAIRWISE, TaskKind.RANKING],
            Kind.UNPAIRED: [TaskKind.RATING],
            Kind.VOTES: list(TaskKind.values),
            Kind.SFT: [TaskKind.PAIRWISE, TaskKind.RANKING],
        }[snapshot.kind]
        # Rating tasks for ratings_as_pairs, and in pairs for their corrections (a better answer over the rated
        # response): read only where there are some, so that a project without them reads what it always did.
        corrections = Annotation.objects.filter(
            task__project_id=snapshot.project_id, task__kind=TaskKind.RATING, written_response__isnull=False
        )
        if options["ratings_as_pairs"] or (snapshot.kind == Kind.PAIRS and corrections.exists()):
            kinds.append(TaskKind.RATING)
        self.prompts, self.prompt_params = "p.project_id = %s", [snapshot.project_id]
        if options["split"]:
            self.prompts += " AND p.split = %s"
            self.prompt_params.append(options["split"])
        # Gold tasks are asked to measure annotators: neither their gold answers nor anyone's on them are data.
        self.tasks = f"t.project_id = %s AND t.status <> %s AND t.kind IN ({', '.join(['%s'] * len(kinds))})"
        self.task_params = [snapshot.project_id, Task.Status.GOLD.value, *kinds]
        if options["round"] is not None:
            self.tasks += " AND t.round_number = %s"
            self.task_params.append(options["round"])
        self.annotations, self.annotation_params = "1 = 1", []
        if snapshot.kind != Kind.VOTES:
            self.annotations, self.annotation_params = "a.source <> %s", [Annotation.Source.AUTO.value]
        judge, votes = Annotation.Source.JUDGE.value, options.get("votes", Votes.HUMAN)  # older snapshots: human
        if votes == Votes.HUMAN:
            self.annotations += " AND a.source <> %s"
            self.annotation_params.append(judge)
        elif votes == Votes.JUDGE:
            self.annotations += " AND a.source = %s"
            self.annotation_params.append(judge)
        elif snapshot.judge_weights is not None:  # both, weighted: only the judges that have a weight
            weighted = list(_judge_voters(snapshot)) or [0]
            listed = ", ".join(["%s"] * len(weighted))
            self.annotations += f" AND (a.source <> %s OR a.annotator_id IN ({listed}))"
            self.annotation_params += [judge, *weighted]
        for name, operator in (("since", ">="), ("until", "<")):
            if options[name]:
                self.annotations += f" AND a.created_at {operator} %s"
                when = datetime.fromisoformat(options[name])
                self.annotation_params.append(connection.ops.adapt_datetimefield_value(when))
        if options["annotator"]:
            self.annotations += f" AND a.annotator_id = (SELECT u.id FROM {self.user} u WHERE u.username = %s)"
            self.annotation_params.append(options["annotator"])
        # Read once, as the export starts (a Dawid–Skene fit leaves out the same voters).
        if excluded := list(snapshot.project.excluded_voters().values_list("user_id", flat=True)):
            listed = ", ".join(["%s"] * len(excluded))
            self.annotations += f" AND (a.annotator_id IS NULL OR a.annotator_id NOT IN ({listed}))"
            self.annotation_params += excluded
        self.annotation_columns, self.annotation_joins = _ANSWER_COLUMNS, ""
        if snapshot.kind == Kind.UNPAIRED:  # the ticked labels, which only this kind reads
            self.annotation_columns += ", a.labels"
        if snapshot.kind == Kind.VOTES:
            self.annotation_columns = _VOTE_COLUMNS
            self.annotation_joins = (
                f" LEFT JOIN {self.user} u ON u.id = a.annotator_id"
                f" LEFT JOIN {Assignment._meta.db_table} s ON s.id = a.assignment_id"
                f" LEFT JOIN {self.response} w ON w.id = a.written_response_id"
            )


def _fetch(sql: str, params: list[Any]) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def _chunks(snapshot: DatasetSnapshot) -> Iterator[_Chunk]:
    """The project's prompts (of the split asked for) in id order, CHUNK_SIZE at a time, with their data."""
    sql = _Sql(snapshot)
    if connection.vendor != "postgresql" or connection.in_atomic_block:
        chunks = (_read_chunk(sql, after, upto) for after, upto in _ranges(sql))
    else:
        chunks = _read_ahead(sql)
    yield from filter(None, chunks)


def _ranges(sql: _Sql) -> Iterator[tuple[int, int | None]]:
    """The chunks' prompt id ranges, after < id <= upto; the last one has no upto."""
    after = 0
    while bound := _fetch(
        f"SELECT p.id FROM {sql.prompt} p WHERE {sql.prompts} AND p.id > %s ORDER BY p.id LIMIT 1 OFFSET %s",
        [*sql.prompt_params, after, CHUNK_SIZE - 1],
    ):
        yield after, bound[0][0]
        after = bound[0][0]
    yield after, None


def _read_ahead(sql: _Sql) -> Iterator[_Chunk | None]:
    """The chunks, READERS of them read at once while this thread turns the one before into rows.

    Each reader is a thread with a database connection of its own: PostgreSQL (other processes) finds, decompresses
    and sends a chunk while the last one is decoded and this thread encodes the one before. Only on PostgreSQL
    outside a transaction: another connection would not see a transaction's uncommitted rows, and SQLite would
    have connections contend for its one lock.
    """
    with ThreadPoolExecutor(max_workers=READERS, thread_name_prefix="export-reader") as readers:
        try:
            pending: deque[Future] = deque()
            for after, upto in _ranges(sql):
                pending.append(readers.submit(_read_chunk, sql, after, upto))
                if len(pending) > READERS:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:  # after an error, reading on is wasted
                future.cancel()
            # Each reader closes the connection it opened (the barrier hands each of them one of these).
            barrier = threading.Barrier(READERS)

            def close() -> None:
                barrier.wait()
                connection.close()

            for closing in [readers.submit(close) for _ in range(READERS)]:
                closing.result()


def _read_chunk(sql: _Sql, after: int, upto: int | None) -> _Chunk | None:
    """The prompts after < id <= upto and their data, or None if there are none."""
    rows = _fetch(
        f"SELECT p.id, p.external_id, p.messages, p.split FROM {sql.prompt} p WHERE {sql.prompts} AND p.id > %s"
        + (" AND p.id <= %s" if upto else "")
        + " ORDER BY p.id",
        [*sql.prompt_params, after, *([upto] if upto else [])],
    )
    if not rows:
        return None
    prompts = {
        prompt_id: _Prompt(external_id, orjson.loads(messages), split)
        for prompt_id, external_id, messages, split in rows
    }
    # Every query reads id ranges, which are index range scans: the chunk's prompt ids, and its tasks' ids (usually
    # one short range). Where other prompts or tasks lie between (other projects, splits, kinds, rounds), a join
    # keeps theirs out; where none do, the plain range is cheaper.
    first, last = next(iter(prompts)), next(reversed(prompts))
    tasks = {
        task_id: _Task(prompt_id, kind, round_number)
        for task_id, prompt_id, kind, round_number in _fetch(
            f"SELECT t.id, t.prompt_id, t.kind, t.round_number FROM {sql.task} t"
            f" WHERE {sql.tasks} AND t.prompt_id BETWEEN %s AND %s ORDER BY t.prompt_id, t.id",
            [*sql.task_params, first, last],
        )
        if prompt_id in prompts
    }
    chunk = _Chunk(prompts, {}, tasks, {}, {})
    if tasks:
        _read_task_data(sql, chunk, first, last)
    # Responses last: whatever a task read above points at was committed before this query, so it is here even
    # when an import or a round adds responses and tasks to these prompts while the chunk is read.
    responses_sql, params = f"SELECT r.id, r.content, r.model_version_id, r.source FROM {sql.response} r", []
    if last - first + 1 > len(prompts):
        responses_sql += f" JOIN {sql.prompt} p ON p.id = r.prompt_id AND {sql.prompts} AND p.id BETWEEN %s AND %s"
        params = [*sql.prompt_params, first, last]
    chunk.responses.update(
        (row[0], _Response(*row))
        for row in _fetch(f"{responses_sql} WHERE r.prompt_id BETWEEN %s AND %s", [*params, first, last])
    )
    for task_id, response_ids in chunk.task_responses.items():
        chunk.task_responses[task_id] = [chunk.responses[response_id] for response_id in response_ids]
    return chunk


def _read_task_data(sql: _Sql, chunk: _Chunk, first: int, last: int) -> None:
    """The chunk's tasks' response ids (in position order) and annotations."""
    tasks = chunk.tasks
    task_range = [min(tasks), max(tasks)]
    others_between = task_range[1] - task_range[0] + 1 > len(tasks)

    def in_tasks(column: str) -> str:
        if not others_between:
            return f"{column} BETWEEN %s AND %s"
        return (
            f"{column} BETWEEN %s AND %s AND {column} IN (SELECT t.id FROM {sql.task} t"
            f" WHERE {sql.tasks} AND t.id BETWEEN %s AND %s AND t.prompt_id BETWEEN %s AND %s)"
        )

    in_tasks_params = [*task_range, *sql.task_params, *task_range, first, last] if others_between else task_range
    for task_id, response_id in _fetch(
        f"SELECT tr.task_id, tr.response_id FROM {sql.task_response} tr"
        f" WHERE {in_tasks('tr.task_id')} ORDER BY tr.task_id, tr.position",
        in_tasks_params,
    ):
        if task_id in tasks:
            chunk.task_responses.setdefault(task_id, []).append(response_id)
    for row in _fetch(
        f"SELECT {sql.annotation_columns} FROM {sql.annotation} a{sql.annotation_joins}"
        f" WHERE {in_tasks('a.task_id')} AND {sql.annotations} ORDER BY a.task_id, a.id",
        [*in_tasks_params, *sql.annotation_params],
    ):
        if row[0] in tasks:
            chunk.annotations.setdefault(row[0], []).append(row)


class _Rated(NamedTuple):
    prompt_id: int
    response: _Response
    total: float  # sum of its scores, each times its weight (annotate/votes.py; 1 but for weighted judges)
    ratings: int
    ticks: Counter  # label → how many of those ratings ticked it, weighted (read by the unpaired kind only)
    weight: float  # the ratings' weights added up: `ratings` where none is weighted

    @property
    def score(self) -> float:
        return self.total / self.weight


def _rated(chunk: _Chunk, weights: Mapping[int, float]) -> list[_Rated]:
    """The chunk's rated responses, by prompt and response id, with their score totals (and label ticks, where
    the chunk read the annotations' labels); a judge's rating counts as its weight of one, as its vote does. A
    response whose ratings all weigh nothing is left out (it has no mean)."""
    sums: dict[tuple[int, int], list] = {}
    for task_id, task in chunk.tasks.items():
        if task.kind != TaskKind.RATING:
            continue
        rows = [row for row in chunk.annotations.get(task_id, ()) if row[1] is not None]
        if not rows:
            continue
        # labels (JSON text) come last, after _ANSWER_COLUMNS, where the chunk read them: see _Sql
        ticks: Counter = Counter()
        for row in rows:
            if len(row) > _LABELS:
                for label in orjson.loads(row[_LABELS]):
                    ticks[label] += weights.get(row[6], 1)
        if weights:
            weight = sum(weights.get(row[6], 1) for row in rows)
            score = sum(row[1] * weights.get(row[6], 1) for row in rows)
        else:  # whole numbers, compared exactly
            weight, score = len(rows), sum(row[1] for row in rows)
        for response in chunk.task_responses[task_id]:
            total = sums.setdefault((task.prompt_id, response.id), [0, 0, Counter(), 0])
            total[0] += score
            total[1] += len(rows)
            total[2] += ticks
            total[3] += weight
    return [
        _Rated(prompt_id, chunk.responses[response_id], total, n, ticks, weight)
        for (prompt_id, response_id), (total, n, ticks, weight) in sorted(sums.items())
        if weight
    ]


# Pairs --------------------------------------------------------------------------------------------


@dataclass
class _Pair:
    prompt_id: int
    task_id: int | None  # None for a pair made from ratings
    chosen: _Response
    rejected: _Response
    margin: float
    votes: int
    votes_chosen: int | None
    votes_rejected: int | None
    votes_tie: int | None
    agreement: float | None
    tie: bool = False
    both_bad: bool = False
    source: str = "votes"  # what decided it (the pair_source column): "votes", "ratings" or "correction"


def _decide(
    prompt_id: int, task_id: int, a: _Response, b: _Response, tally: Tally, decision: Decision, options: dict[str, Any]
) -> _Pair | None:
    """The pair a decision on its tally makes, or None when the options leave it out."""
    winner, margin, agreement, both_bad = decision
    tie = winner == "tie"
    if (tie and not options["include_ties"]) or (both_bad and not options["include_both_bad"]):
        return None
    if options["min_agreement"] is not None and agreement < options["min_agreement"]:
        return None
    if winner == "b":
        chosen, rejected, votes_chosen, votes_rejected = b, a, tally.for_b, tally.for_a
    else:  # a kept tie lists a as chosen
        chosen, rejected, votes_chosen, votes_rejected = a, b, tally.for_a, tally.for_b
    return _Pair(
        prompt_id, task_id, chosen, rejected, margin, tally.votes, votes_chosen, votes_rejected, tally.ties,
        agreement, tie, both_bad,
    )  # fmt: skip


def _chunk_pairs(
    snapshot: DatasetSnapshot, chunk: _Chunk, sides: "SideModel | None", weights: Mapping[int, float]
) -> list[_Pair]:
    """The pairs of these prompts: by prompt, then task and positions, then the pairs from ratings. Decided by
    majority (a weighted judge's vote counting as its weight of one: `weights`, judge user id → weight), or by
    `sides` (a Dawid–Skene fit) when given."""
    if sides is not None:
        return _chunk_pairs_by(sides, snapshot, chunk)
    pairs, options = [], snapshot.filters
    for task_id, task in chunk.tasks.items():
        if (rows := chunk.annotations.get(task_id)) is None:
            continue
        if task.kind == TaskKind.RATING:
            pairs += _correction_pairs(chunk, task_id, rows)
            continue
        if weights and any(row[6] in weights for row in rows):
            pairs += _weighted_pairs(chunk, task_id, rows, weights, options)
            continue
        # The votes of the task's annotations (rows of _ANSWER_COLUMNS) on each pair of its responses, by the vote
        # model (annotate/votes.py).
        if task.kind == TaskKind.PAIRWISE:
            tally = Tally()
            for _, _, choice, strength, both_bad, *_ in rows:
                tally.add(pairwise_vote(choice, strength, both_bad))
            a, b = chunk.task_responses[task_id]
            if pair := _decide(task.prompt_id, task_id, a, b, tally, decide(tally), options):
                pairs.append(pair)
            continue
        responses = {response.id: response for response in chunk.task_responses[task_id]}
        for (a, b), tally in tally_rankings((orjson.loads(row[5]) for row in rows), list(responses)).items():
            if pair := _decide(task.prompt_id, task_id, responses[a], responses[b], tally, decide(tally), options):
                pairs.append(pair)
    return _with_rating_pairs(snapshot, chunk, pairs, weights)


def _weighted_pairs(
    chunk: _Chunk, task_id: int, rows: list[tuple], weights: Mapping[int, float], options: dict[str, Any]
) -> list[_Pair]:
    """The pairs of a task that weighted judges voted on: each decided on its weighted tally (annotate/votes.py),
    with the whole vote counts; a pair whose votes all weigh nothing is left out (nothing decides it)."""
    task, responses = chunk.tasks[task_id], chunk.task_responses[task_id]
    votes = _task_votes(task.kind, responses, rows)
    pairs = []
    for (a, b), pair_votes in votes.items():
        counted, weighed = Tally(), Tally()
        for voter, vote in pair_votes:
            counted.add(vote)
            weighed.add_weighted(vote, weights.get(voter, 1))
        if weighed.votes and (pair := _decide(task.prompt_id, task_id, a, b, counted, decide(weighed), options)):
            pairs.append(pair)
    return pairs


def _task_votes(
    kind: str, responses: list[_Response], rows: list[tuple]
) -> dict[tuple[_Response, _Response], list[tuple[int | None, Vote]]]:
    """Each pair of a task's responses (a before b in position order) with its votes, each (voter, Vote)."""
    if kind == TaskKind.PAIRWISE:
        return {(responses[0], responses[1]): [(row[6], pairwise_vote(*row[2:5])) for row in rows]}
    by_id = {response.id: response for response in responses}
    votes: dict[tuple[_Response, _Response], list[tuple[int | None, Vote]]] = {}
    for row in rows:
        for (a, b), vote in ranking_votes(orjson.loads(row[5]), list(by_id)).items():
            votes.setdefault((by_id[a], by_id[b]), []).append((row[6], vote))
    return votes


def _chunk_pairs_by(sides: "SideModel", snapshot: DatasetSnapshot, chunk: _Chunk) -> list[_Pair]:
    """The pairs of these prompts as _chunk_pairs makes them, each decided by its Dawid–Skene posterior."""
    pairs, options = [], snapshot.filters
    for task_id, task in chunk.tasks.items():
        if (rows := chunk.annotations.get(task_id)) is None:
            continue
        if task.kind == TaskKind.RATING:
            pairs += _correction_pairs(chunk, task_id, rows)
            continue
        for (a, b), pair_votes in _task_votes(task.kind, chunk.task_responses[task_id], rows).items():
            pair_tally = tally(vote for _, vote in pair_votes)
            decision = sides.decide(pair_tally, [(voter, vote.value) for voter, vote in pair_votes])
            if pair := _decide(task.prompt_id, task_id, a, b, pair_tally, decision, options):
                pairs.append(pair)
    return _with_rating_pairs(snapshot, chunk, pairs, {})


def _correction_pairs(chunk: _Chunk, task_id: int, rows: list[tuple]) -> list[_Pair]:
    """A rating task's corrections: each annotator's better answer over the rated response, one pair each, as one
    "better" vote (margin 1) with no agreement (min_agreement leaves them be, as the pairs from ratings)."""
    task, (rated,) = chunk.tasks[task_id], chunk.task_responses[task_id]
    return [
        _Pair(task.prompt_id, task_id, chunk.responses[row[7]], rated, 1.0, 1, 1, 0, 0, None, source="correction")
        for row in rows
        # Read after the annotations: a correction removed meanwhile (My work) is gone from them.
        if row[7] in chunk.responses
    ]


def _with_rating_pairs(
    snapshot: DatasetSnapshot, chunk: _Chunk, pairs: list[_Pair], weights: Mapping[int, float]
) -> list[_Pair]:
    """The task pairs, and after each prompt's those that ratings make (ratings_as_pairs)."""
    if snapshot.filters["ratings_as_pairs"]:
        scale = snapshot.project.rating_max - snapshot.project.rating_min
        for prompt_id, rated in groupby(_rated(chunk, weights), key=itemgetter(0)):
            for x, y in combinations(rated, 2):
                if x.total * y.weight == y.total * x.weight:  # equal means, compared exactly (whole numbers)
                    continue
                better, worse = (x, y) if x.total * y.weight > y.total * x.weight else (y, x)
                # The difference of the means on the votes' scale: the whole rating scale is 2, "much better".
                margin = 2 * (better.score - worse.score) / scale
                ratings = x.ratings + y.ratings
                pairs.append(
                    _Pair(
                        prompt_id, None, better.response, worse.response, margin, ratings, *[None] * 4, source="ratings"
                    )
                )
        pairs.sort(key=lambda pair: pair.prompt_id)  # stable: each prompt's task pairs stay first, in order
    return pairs


# Rows ---------------------------------------------------------------------------------------------


def _rows(snapshot: DatasetSnapshot) -> Iterator[dict[str, Any]]:
    sides = None
    if snapshot.filters.get("aggregation") == Aggregation.DAWID_SKENE:
        from annotate.aggregation import fit_sides  # numpy: a majority export does without it

        started = monotonic()
        sides = fit_sides(snapshot.project, votes=snapshot.filters.get("votes", Votes.HUMAN))
        logger.info("Export %s: Dawid-Skene fit in %.2f s", snapshot.pk, monotonic() - started)
    weights = _judge_voters(snapshot)
    kind_rows = {
        Kind.PAIRS: partial(_pair_rows, sides=sides, weights=weights),
        Kind.UNPAIRED: partial(_unpaired_rows, weights=weights),
        Kind.VOTES: _vote_rows,
        Kind.SFT: partial(_sft_rows, sides=sides, weights=weights),
    }
    for chunk in _chunks(snapshot):
        rendered = {prompt_id: _render(prompt.messages, snapshot.style) for prompt_id, prompt in chunk.prompts.items()}
        yield from kind_rows[snapshot.kind](snapshot, chunk, rendered)


def _render(messages: list[dict[str, str]], style: str) -> list[dict[str, str]] | str:
    if style == Style.CONVERSATIONAL:
        return [{"role": message["role"], "content": message["content"]} for message in messages]
    return "".join(f"{message['role']}: {message['content']}\n\n" for message in messages) + STANDARD_ANSWER


def _completion(text: str, style: str) -> list[dict[str, str]] | str:
    return [{"role": "assistant", "content": text}] if style == Style.CONVERSATIONAL else text


def _pair_rows(
    snapshot: DatasetSnapshot,
    chunk: _Chunk,
    rendered: dict[int, Any],
    sides: "SideModel | None",
    weights: Mapping[int, float],
) -> Iterator[dict[str, Any]]:
    for pair in _chunk_pairs(snapshot, chunk, sides, weights):
        yield {
            "prompt": rendered[pair.prompt_id],
            "chosen": _completion(pair.chosen.content, snapshot.style),
            "rejected": _completion(pair.rejected.content, snapshot.style),
            "margin": pair.margin,
            "votes": pair.votes,
            "votes_chosen": pair.votes_chosen,
            "votes_rejected": pair.votes_rejected,
            "votes_tie": pair.votes_tie,
            "agreement": pair.agreement,
            "tie": pair.tie,
            "both_bad": pair.both_bad,
            "pair_source": pair.source,
            "prompt_id": chunk.prompts[pair.prompt_id].external_id,
            "task_id": pair.task_id,
            "chosen_id": pair.chosen.id,
            "rejected_id": pair.rejected.id,
            "chosen_model_version": pair.chosen.model_version,
            "rejected_model_version": pair.rejected.model_version,
        }


def _unpaired_rows(
    snapshot: DatasetSnapshot, chunk: _Chunk, rendered: dict[int, Any], weights: Mapping[int, float]
) -> Iterator[dict[str, Any]]:
    project = snapshot.project
    width, labels = project.rating_max - project.rating_min, project.labels
    for rated in _rated(chunk, weights):
        yield {
            "prompt": rendered[rated.prompt_id],
            "completion": _completion(rated.response.content, snapshot.style),
            # mean > midpoint, in whole numbers (but for weighted judges): total / weight > (min + max) / 2
            "label": 2 * rated.total > (project.rating_min + project.rating_max) * rated.weight,
            "score": rated.score,
            "ratings": rated.ratings,
            "prompt_id": chunk.prompts[rated.prompt_id].external_id,
            "response_id": rated.response.id,
            "model_version": rated.response.model_version,
            "scaled_score": (rated.score - project.rating_min) / width,
            "label_shares": [{"label": label, "share": rated.ticks[label] / rated.weight} for label in labels],
        }


def _vote_rows(snapshot: DatasetSnapshot, chunk: _Chunk, rendered: dict[int, Any]) -> Iterator[dict[str, Any]]:
    reveal = snapshot.filters["reveal_annotators"]
    for task_id, task in chunk.tasks.items():
        prompt, responses = chunk.prompts[task.prompt_id], chunk.task_responses.get(task_id, [])
        rating, pairwise = task.kind == TaskKind.RATING, task.kind == TaskKind.PAIRWISE
        for (
            _, annotation_id, source, annotator_id, username, score, labels, choice, strength, both_bad, ranking,
            written, comment, time_spent, shown_order, created_at,
        ) in chunk.annotations.get(task_id, ()):  # fmt: skip
            yield {
                "annotation_id": annotation_id,
                "task_id": task_id,
                "kind": task.kind,
                "split": prompt.split,
                "round": task.round_number,
                "prompt_id": prompt.external_id,
                "prompt": rendered[task.prompt_id],
                "response_ids": [response.id for response in responses],
                "responses": [response.content for response in responses],
                "source": source,
                "annotator": (username if reveal else _pseudonym(annotator_id)) if annotator_id else None,
                "score": score if rating else None,
                "labels": orjson.loads(labels) if rating else None,
                "choice": choice if pairwise else None,
                "strength": strength if pairwise else None,
                "both_bad": bool(both_bad) if pairwise else None,
                "ranking": orjson.loads(ranking) if task.kind == TaskKind.RANKING else None,
                "written": written,
                "comment": comment,
                "time_spent": _seconds(time_spent),
                "shown_order": orjson.loads(shown_order) if shown_order is not None else None,
                "created_at": _utc(created_at).isoformat(),
            }


def _seconds(duration: timedelta | int | None) -> float | None:
    """A duration column in seconds: psycopg reads an interval, SQLite holds Django's microseconds."""
    if duration is None:
        return None
    return duration.total_seconds() if isinstance(duration, timedelta) else duration / 1_000_000


def _utc(value: datetime | str) -> datetime:
    """A datetime column in UTC: psycopg reads an aware datetime, SQLite holds Django's naive UTC text."""
    if isinstance(value, str):
        return datetime.fromisoformat(value).replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _pseudonym(user_id: int) -> str:
    """A stable stand-in for a user: keyed, so it cannot be reversed by hashing every id."""
    return hmac.new(settings.SECRET_KEY.encode(), str(user_id).encode(), hashlib.sha256).hexdigest()[:16]


def _sft_rows(
    snapshot: DatasetSnapshot,
    chunk: _Chunk,
    rendered: dict[int, Any],
    sides: "SideModel | None",
    weights: Mapping[int, float],
) -> Iterator[dict[str, Any]]:
    options, responses = snapshot.filters, chunk.responses
    best = {(pair.prompt_id, pair.chosen.id): pair.chosen for pair in _chunk_pairs(snapshot, chunk, sides, weights)}
    # Human-written responses: imported demonstrations (no author) and annotators' written answers and corrections.
    human = Response.objects.filter(id__in=[r.id for r in responses.values() if r.source == Response.Source.HUMAN])
    human = human.exclude(author__in=snapshot.project.excluded_voters().values("user_id"))
    # A better answer given on a gold task is no data, as no answer to one is (they measure annotators).
    human = human.exclude(written_in__task__status=Task.Status.GOLD)
    if options["annotator"]:  # only what that annotator wrote
        human = human.filter(author__username=options["annotator"])
    if options["round"] is not None:
        # In a task of that round, or written as an answer to one.
        in_round = Q(task_responses__task__round_number=options["round"])
        human = human.filter(in_round | Q(written_in__task__round_number=options["round"])).distinct()
    if options["since"]:
        human = human.filter(created_at__gte=options["since"])
    if options["until"]:
        human = human.filter(created_at__lt=options["until"])
    if options.get("votes") != Votes.JUDGE:  # what people wrote is no judge's answer
        for prompt_id, response_id in human.values_list("prompt_id", "id"):
            best[prompt_id, response_id] = responses[response_id]
    for (prompt_id, _), response in sorted(best.items(), key=itemgetter(0)):
        if snapshot.style == Style.CONVERSATIONAL:
            text = {"messages": [*rendered[prompt_id], *_completion(response.content, Style.CONVERSATIONAL)]}
        else:
            text = {"prompt": rendered[prompt_id], "completion": response.content}
        yield {
            **text,
            "prompt_id": chunk.prompts[prompt_id].external_id,
            "response_id": response.id,
            "source": response.source,
            "model_version": response.model_version,
        }


# Writing ------------------------------------------------------------------------------------------


def _schema(kind: str, style: str) -> "pa.Schema":
    """The columns of each kind, explicit so that an empty export has the same types as a full one."""
    import pyarrow as pa

    i64, f64, string, boolean = pa.int64(), pa.float64(), pa.string(), pa.bool_()
    messages = pa.list_(pa.struct([("role", string), ("content", string)]))
    text = messages if style == Style.CONVERSATIONAL else string
    if kind == Kind.PAIRS:
        fields = [
            ("prompt", text), ("chosen", text), ("rejected", text), ("margin", f64), ("votes", i64),
            ("votes_chosen", i64), ("votes_rejected", i64), ("votes_tie", i64), ("agreement", f64),
            ("tie", boolean), ("both_bad", boolean), ("pair_source", string), ("prompt_id", string), ("task_id", i64),
            ("chosen_id", i64),
            ("rejected_id", i64), ("chosen_model_version", i64), ("rejected_model_version", i64),
        ]  # fmt: skip
    elif kind == Kind.UNPAIRED:
        fields = [
            ("prompt", text), ("completion", text), ("label", boolean), ("score", f64), ("ratings", i64),
            ("prompt_id", string), ("response_id", i64), ("model_version", i64), ("scaled_score", f64),
            ("label_shares", pa.list_(pa.struct([("label", string), ("share", f64)]))),
        ]  # fmt: skip
    elif kind == Kind.VOTES:
        fields = [
            ("annotation_id", i64), ("task_id", i64), ("kind", string), ("split", string), ("round", i64),
            ("prompt_id", string), ("prompt", text), ("response_ids", pa.list_(i64)),
            ("responses", pa.list_(string)), ("source", string), ("annotator", string), ("score", i64),
            ("labels", pa.list_(string)), ("choice", string), ("strength", i64), ("both_bad", boolean),
            ("ranking", pa.list_(pa.list_(i64))), ("written", string), ("comment", string), ("time_spent", f64),
            ("shown_order", pa.list_(i64)), ("created_at", string),
        ]  # fmt: skip
    else:
        if style == Style.CONVERSATIONAL:
            fields = [("messages", messages)]
        else:
            fields = [("prompt", string), ("completion", string)]
        fields += [("prompt_id", string), ("response_id", i64), ("source", string), ("model_version", i64)]
    return pa.schema(fields)


def _write(snapshot: DatasetSnapshot, rows: Iterator[dict[str, Any]], out: IO[bytes]) -> tuple[int, str]:
    """Write the rows to `out` CHUNK_SIZE at a time, recording progress after each; returns how many and the
    sha256 of what was written."""
    file, batches = _HashedFile(out), _jsonl_batches(rows)
    if snapshot.format == Format.PARQUET:
        count = _write_parquet(snapshot, batches, file)
    else:
        count = _write_batches(snapshot, batches, file.write)
    out.flush()
    return count, file.sha256.hexdigest()


def _jsonl_batches(rows: Iterator[dict[str, Any]]) -> Iterator[tuple[int, bytearray]]:
    """CHUNK_SIZE rows at a time as JSON Lines: (how many, the bytes)."""
    # orjson: compact, UTF-8, floats in their shortest round-trip form; six times as fast as json.dumps. Each row
    # goes into the batch's buffer as it comes, so neither the rows nor their encodings pile up.
    count, buffer = 0, bytearray()
    for row in rows:
        buffer += orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE)
        count += 1
        if count == CHUNK_SIZE:
            yield count, buffer
            count, buffer = 0, bytearray()
    if count:
        yield count, buffer


def _write_parquet(snapshot: DatasetSnapshot, batches: Iterator[tuple[int, bytearray]], file: "_HashedFile") -> int:
    """Write the JSON Lines batches as Parquet, each batch a row group."""
    # Imported here: a JSON Lines export does without pyarrow.
    import pyarrow as pa
    import pyarrow.json
    import pyarrow.parquet as pq

    schema = _schema(snapshot.kind, snapshot.style)
    parse = pyarrow.json.ParseOptions(explicit_schema=schema, unexpected_field_behavior="error")

    def write(data: bytearray) -> None:
        # Arrow's JSON reader makes the table: C++ that lets go of the GIL, so it runs beside the next batch's
        # encoding, and unlike pa.Table.from_pylist it does not import pandas (some 50 MB) where that is installed.
        # One block for the whole batch: a row must not straddle two.
        read = pyarrow.json.ReadOptions(use_threads=False, block_size=len(data) + 1)
        writer.write_table(pyarrow.json.read_json(pa.BufferReader(data), read_options=read, parse_options=parse))

    # No dictionary encoding: the texts are nearly all distinct, and building a dictionary of them costs time.
    # Statistics (each row group's min and max) only for numbers: a text's would be texts, which the writer keeps
    # for the footer until the end.
    numbers = [field.name for field in schema if not (pa.types.is_string(field.type) or pa.types.is_list(field.type))]
    with pq.ParquetWriter(file, schema, use_dictionary=False, write_statistics=numbers) as writer:
        return _write_batches(snapshot, batches, write)


def _write_batches(snapshot: DatasetSnapshot, batches: Iterator[tuple[int, Any]], write: Callable[[Any], Any]) -> int:
    """write(data) each (row count, data) batch on a thread of its own, one batch at a time, recording progress
    (rows_written) every PROGRESS_SECONDS; returns how many rows were written (the caller records the total).

    Writing, hashing and Parquet's encoding and compression release the GIL, so they run beside the reading and
    encoding of the next batch instead of after it.
    """
    count, pending, reported = 0, None, monotonic()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="export-writer") as writer:
        for rows, data in batches:
            if pending:
                pending.result()  # the previous batch is written (or its error raised here)
                if monotonic() - reported >= PROGRESS_SECONDS:
                    DatasetSnapshot.objects.filter(pk=snapshot.pk).update(rows_written=count)
                    reported = monotonic()
            pending = writer.submit(write, data)
            count += rows
        if pending:
            pending.result()
    return count


class _HashedFile:
    """A file that keeps the sha256 of what is written to it, so that the export is not read back to hash it."""

    closed = False  # pyarrow asks

    def __init__(self, file: IO[bytes]) -> None:
        self.file, self.sha256 = file, hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        return self.file.write(data)

    def flush(self) -> None:
        self.file.flush()
