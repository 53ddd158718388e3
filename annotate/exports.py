"""Export a project's annotations as datasets that Hugging Face `datasets` and TRL's trainers take as they are.

The one export path: the admin, `manage.py export_dataset`, the API and the Celery task all call
`create_snapshot` (check the settings, save a pending DatasetSnapshot) and then `run_snapshot` (write the file,
record its row count and sha256). Kinds:

- pairs:    TRL's prompt / chosen / rejected (reward models, DPO): one row per pair of responses a task's votes
            decide, with margin, vote counts, agreement, the task, the responses and the model versions that
            wrote them (null for imported or human responses).
- unpaired: TRL's KTO form prompt / completion / label: one row per rated response, `score` its mean rating
            over `ratings` ratings, label = score above the scale's midpoint (a mean exactly at the midpoint is
            labelled false: only better than middling counts as desirable; filter on `score` to drop those).
- votes:    one row per annotation with every field. Annotators are pseudonymised (the first 16 hex digits of
            HMAC-SHA256 of their user id, keyed with SECRET_KEY: stable while the key is) unless
            reveal_annotators asks for usernames.
- sft:      `messages` ending in a preferred response (the chosen side of every pair a pairs export with the
            same filters would hold; ties and both-bad pairs never) or a human-written one, once per
            (prompt, response).

Pairwise votes on one task are aggregated so: each vote counts +strength for response a (task position 0),
-strength for b, 0 for a tie. The sign of the sum picks the winner; margin = |sum| / votes; agreement = the
share of votes on the winning side (for a tie, the share of tie votes). A sum of 0 is a tie, and a pair most of
whose votes say "both bad" is both_bad: both are left out unless include_ties / include_both_bad keep them,
flagged in the `tie` / `both_bad` columns (a kept tie lists response a as chosen). A ranking implies a pair for
every two of its task's responses, in position order; each ranking annotation is a vote of strength 1 for the
better of the two, and a pair it ties gets no vote from it. With ratings_as_pairs, two rated responses to one
prompt whose mean scores differ make a pair as well, after the prompt's task pairs: margin = the difference of
the means, votes = the ratings behind both; they have no task, no per-side votes and no agreement
(min_agreement leaves them be). Imported annotations are votes like any other.

Styles: conversational (the prompt is the message list, a completion is [{"role": "assistant", "content": …}])
or standard (strings: a prompt that is one user message is its content; any other is a transcript of
"role: content" turns separated by blank lines; sft gives prompt / completion then instead of messages).

Filters narrow what counts: split (the prompt's), round (the task's round_number), since / until (the
annotation's created_at, since <= created_at < until; a date means midnight UTC, a time without zone is UTC),
annotator (username: only that person's annotations), min_agreement (pairs and sft). For sft's human-written
responses, split and round (a task of that round holds the response) apply, since / until to when the response
was written, and an annotator filter leaves them out (a response does not record who wrote it).

Rows are ordered by prompt, then task, then pair (by task positions) or annotation, and hold nothing that
depends on when or where the export ran, so the same data and options give the same bytes and sha256 (Parquet:
with the same pyarrow). Prompts are read CHUNK_SIZE at a time, each chunk with a few short queries from the
last prompt id on: memory stays flat whatever the size, the first row is written after the first chunk, and no
transaction or server-side cursor stays open, so progress (rows_written) is visible while it runs. (On
PostgreSQL, Django's .iterator() outside a transaction declares a WITH HOLD cursor, which the server
materialises in full before the first row.) A project that changes during an export is read prompt chunk by
prompt chunk, each as it was when its chunk was read.
"""

import contextlib
import hashlib
import hmac
import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from itertools import combinations, groupby, islice
from operator import itemgetter
from typing import IO, TYPE_CHECKING, Any, NamedTuple

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.files.uploadedfile import TemporaryUploadedFile
from django.db.models import Count, QuerySet, Sum
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from annotate.models import Annotation, DatasetSnapshot, Project, Prompt, Response, TaskKind, TaskResponse

if TYPE_CHECKING:
    import pyarrow as pa

logger = logging.getLogger(__name__)

CHUNK_SIZE = 2000  # prompts read per round of queries; rows per write (and per Parquet row group)

Kind = DatasetSnapshot.Kind
Format = DatasetSnapshot.Format
Style = DatasetSnapshot.Style
Status = DatasetSnapshot.Status


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
        project=project, kind=kind, format=format, style=style, filters=options, created_by=user
    )


def run_snapshot(snapshot: DatasetSnapshot) -> DatasetSnapshot:
    """Write a pending snapshot's file and mark it ready, or failed with the error; returns the snapshot.

    A snapshot runs once: one that is no longer pending (a task delivered twice) is returned as it is.
    """
    if not DatasetSnapshot.objects.filter(pk=snapshot.pk, status=Status.PENDING).update(status=Status.RUNNING):
        snapshot.refresh_from_db()
        return snapshot
    snapshot.status = Status.RUNNING
    try:
        # A temporary "upload" lives in FILE_UPLOAD_TEMP_DIR, and FileSystemStorage moves it into MEDIA_ROOT
        # instead of copying gigabytes.
        with TemporaryUploadedFile(f"export.{snapshot.format}", "application/octet-stream", 0, None) as tmp:
            row_count = _write(snapshot, _rows(snapshot), tmp.file)
            sha256 = _sha256(tmp.file)
            name = f"{snapshot.project.slug}-{snapshot.kind}-{snapshot.pk}.{snapshot.format}"
            snapshot.file.save(name, tmp, save=False)
    except Exception as error:
        # Whatever went wrong belongs on the snapshot, where the admin, the API and the command look for it.
        logger.exception("Export %s failed", snapshot.pk)
        snapshot.status, snapshot.error, snapshot.finished_at = Status.FAILED, str(error) or repr(error), timezone.now()
        snapshot.save(update_fields=["status", "error", "finished_at"])
        return snapshot
    snapshot.status, snapshot.finished_at = Status.READY, timezone.now()
    snapshot.row_count = snapshot.rows_written = row_count
    snapshot.sha256 = sha256
    snapshot.save(update_fields=["status", "row_count", "rows_written", "sha256", "file", "finished_at"])
    return snapshot


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


def _prompts(snapshot: DatasetSnapshot) -> QuerySet:
    """The project's prompts, of the split asked for."""
    prompts = snapshot.project.prompts.all()
    return prompts.filter(split=snapshot.filters["split"]) if snapshot.filters["split"] else prompts


def _prompt_chunks(snapshot: DatasetSnapshot) -> Iterator[dict[int, _Prompt]]:
    """The project's prompts (of the split asked for) in id order, CHUNK_SIZE at a time: {id: prompt}."""
    prompts = _prompts(snapshot).order_by("id")
    last = 0
    while chunk := list(prompts.filter(id__gt=last).values_list("id", "external_id", "messages", "split")[:CHUNK_SIZE]):
        last = chunk[-1][0]
        yield {prompt_id: _Prompt(*rest) for prompt_id, *rest in chunk}


def _annotations(snapshot: DatasetSnapshot, prompts: dict[int, _Prompt]) -> QuerySet:
    """The annotations on these prompts' tasks that the snapshot's filters let through."""
    options = snapshot.filters
    annotations = Annotation.objects.filter(**_their_tasks(snapshot, prompts))
    if options["round"] is not None:
        annotations = annotations.filter(task__round_number=options["round"])
    if options["since"]:
        annotations = annotations.filter(created_at__gte=options["since"])
    if options["until"]:
        annotations = annotations.filter(created_at__lt=options["until"])
    if options["annotator"]:
        annotations = annotations.filter(annotator__username=options["annotator"])
    return annotations


def _within(prompt_path: str, prompts: dict[int, _Prompt]) -> dict[str, int]:
    """Lookups for "the prompt at prompt_path lies in this chunk's id range": an index range scan. The range
    also holds other projects' (and splits') prompts, so each query narrows it to the project (and split)."""
    ids = list(prompts)
    return {f"{prompt_path}__gte": ids[0], f"{prompt_path}__lte": ids[-1]}


def _their_tasks(snapshot: DatasetSnapshot, prompts: dict[int, _Prompt]) -> dict[str, Any]:
    """Lookups, from a row with a task, for the tasks of these prompts."""
    lookups = {"task__project": snapshot.project, **_within("task__prompt", prompts)}
    if snapshot.filters["split"]:
        lookups["task__prompt__split"] = snapshot.filters["split"]
    return lookups


def _responses(snapshot: DatasetSnapshot, prompts: dict[int, _Prompt]) -> dict[int, _Response]:
    """Every response to these prompts, by id."""
    # The id range makes an index range scan; the subquery keeps out other projects' prompts in that range.
    rows = (
        Response.objects.filter(
            **_within("prompt", prompts), prompt__in=_prompts(snapshot).filter(**_within("id", prompts))
        )
        .order_by()
        .values_list("id", "content", "model_version_id", "source")
    )
    return {row[0]: _Response(*row) for row in rows}


def _task_responses(
    snapshot: DatasetSnapshot, prompts: dict[int, _Prompt], responses: dict[int, _Response], kinds: list[str]
) -> dict[int, list[_Response]]:
    """The responses of these prompts' tasks of these kinds, by task, in position order."""
    rows = (
        TaskResponse.objects.filter(task__kind__in=kinds, **_their_tasks(snapshot, prompts))
        .order_by("task_id", "position")
        .values_list("task_id", "response_id")
    )
    by_task: dict[int, list[_Response]] = {}
    for task_id, response_id in rows:
        by_task.setdefault(task_id, []).append(responses[response_id])
    return by_task


class _Rated(NamedTuple):
    prompt_id: int
    response: _Response
    total: int  # sum of its scores
    ratings: int


def _rated(snapshot: DatasetSnapshot, prompts: dict[int, _Prompt], responses: dict[int, _Response]) -> list[_Rated]:
    """The rated responses of these prompts, by prompt and response id, with their score totals."""
    sums = list(
        _annotations(snapshot, prompts)
        .filter(task__kind=TaskKind.RATING, score__isnull=False)
        .values_list("task__prompt_id", "task__task_responses__response_id")
        .annotate(total=Sum("score"), n=Count("pk"))
        .order_by("task__prompt_id", "task__task_responses__response_id")
    )
    return [_Rated(prompt_id, responses[response_id], total, n) for prompt_id, response_id, total, n in sums]


# Pairs --------------------------------------------------------------------------------------------


@dataclass
class _Tally:
    """The votes on one pair of a task's responses: a comes first in the task's positions."""

    a: _Response
    b: _Response
    total: int = 0  # the sum of +strength for a, -strength for b, 0 for a tie
    for_a: int = 0
    for_b: int = 0
    ties: int = 0
    both_bad: int = 0

    @property
    def votes(self) -> int:
        return self.for_a + self.for_b + self.ties

    def add(self, signed_strength: int, both_bad: bool) -> None:
        self.total += signed_strength
        self.for_a += signed_strength > 0
        self.for_b += signed_strength < 0
        self.ties += signed_strength == 0
        self.both_bad += both_bad


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


_SIGN = {"a": 1, "b": -1, "tie": 0}


def _tallies(kind: str, responses: list[_Response], votes: list[tuple]) -> list[_Tally]:
    """The votes of one task's annotations on each pair of its responses; votes are (…, choice, strength,
    both_bad, ranking) tuples."""
    if kind == TaskKind.PAIRWISE:
        tally = _Tally(*responses)
        for *_, choice, strength, both_bad, _ in votes:
            tally.add(_SIGN[choice] * (strength or 1), both_bad)
        return [tally]
    tallies = [_Tally(a, b) for a, b in combinations(responses, 2)]
    for *_, ranking in votes:
        rank = {response_id: place for place, group in enumerate(ranking) for response_id in group}
        for tally in tallies:
            if rank[tally.a.id] != rank[tally.b.id]:
                tally.add(1 if rank[tally.a.id] < rank[tally.b.id] else -1, False)
    return [tally for tally in tallies if tally.votes]


def _decide(prompt_id: int, task_id: int, tally: _Tally, options: dict[str, Any]) -> _Pair | None:
    """The pair a tally makes, or None when the options leave it out."""
    n = tally.votes
    tie, both_bad = tally.total == 0, 2 * tally.both_bad > n
    if (tie and not options["include_ties"]) or (both_bad and not options["include_both_bad"]):
        return None
    if tally.total >= 0:
        chosen, rejected, votes_chosen, votes_rejected = tally.a, tally.b, tally.for_a, tally.for_b
    else:
        chosen, rejected, votes_chosen, votes_rejected = tally.b, tally.a, tally.for_b, tally.for_a
    agreement = (tally.ties if tie else votes_chosen) / n
    if options["min_agreement"] is not None and agreement < options["min_agreement"]:
        return None
    return _Pair(
        prompt_id, task_id, chosen, rejected, abs(tally.total) / n, n, votes_chosen, votes_rejected, tally.ties,
        agreement, tie, both_bad,
    )  # fmt: skip


def _chunk_pairs(
    snapshot: DatasetSnapshot, prompts: dict[int, _Prompt], responses: dict[int, _Response]
) -> list[_Pair]:
    """The pairs of these prompts: by prompt, then task and positions, then the pairs from ratings."""
    kinds = [TaskKind.PAIRWISE, TaskKind.RANKING]
    votes = list(
        _annotations(snapshot, prompts)
        .filter(task__kind__in=kinds)
        .order_by("task__prompt_id", "task_id", "id")
        .values_list("task_id", "task__prompt_id", "task__kind", "choice", "strength", "both_bad", "ranking")
    )
    by_task = _task_responses(snapshot, prompts, responses, kinds)
    pairs = []
    for task_id, task_votes in groupby(votes, key=itemgetter(0)):
        task_votes = list(task_votes)
        prompt_id, kind = task_votes[0][1], task_votes[0][2]
        for tally in _tallies(kind, by_task[task_id], task_votes):
            if pair := _decide(prompt_id, task_id, tally, snapshot.filters):
                pairs.append(pair)
    if snapshot.filters["ratings_as_pairs"]:
        for prompt_id, rated in groupby(_rated(snapshot, prompts, responses), key=itemgetter(0)):
            for x, y in combinations(rated, 2):
                if x.total * y.ratings == y.total * x.ratings:  # equal means, compared exactly
                    continue
                better, worse = (x, y) if x.total * y.ratings > y.total * x.ratings else (y, x)
                margin = better.total / better.ratings - worse.total / worse.ratings
                ratings = x.ratings + y.ratings
                pairs.append(_Pair(prompt_id, None, better.response, worse.response, margin, ratings, *[None] * 4))
        pairs.sort(key=lambda pair: pair.prompt_id)  # stable: each prompt's task pairs stay first, in order
    return pairs


# Rows ---------------------------------------------------------------------------------------------


def _rows(snapshot: DatasetSnapshot) -> Iterator[dict[str, Any]]:
    kind, style = snapshot.kind, snapshot.style
    for prompts in _prompt_chunks(snapshot):
        responses = _responses(snapshot, prompts)
        rendered = {prompt_id: _render(prompt.messages, style) for prompt_id, prompt in prompts.items()}
        if kind == Kind.PAIRS:
            for pair in _chunk_pairs(snapshot, prompts, responses):
                yield _pair_row(pair, prompts, rendered, style)
        elif kind == Kind.UNPAIRED:
            yield from _unpaired_rows(snapshot, prompts, responses, rendered)
        elif kind == Kind.VOTES:
            yield from _vote_rows(snapshot, prompts, responses, rendered)
        else:
            yield from _sft_rows(snapshot, prompts, responses, rendered)


def _render(messages: list[dict[str, str]], style: str) -> list[dict[str, str]] | str:
    if style == Style.CONVERSATIONAL:
        return [{"role": message["role"], "content": message["content"]} for message in messages]
    if len(messages) == 1 and messages[0]["role"] == "user":
        return messages[0]["content"]
    return "\n\n".join(f"{message['role']}: {message['content']}" for message in messages)


def _completion(text: str, style: str) -> list[dict[str, str]] | str:
    return [{"role": "assistant", "content": text}] if style == Style.CONVERSATIONAL else text


def _pair_row(pair: _Pair, prompts: dict[int, _Prompt], rendered: dict[int, Any], style: str) -> dict[str, Any]:
    return {
        "prompt": rendered[pair.prompt_id],
        "chosen": _completion(pair.chosen.content, style),
        "rejected": _completion(pair.rejected.content, style),
        "margin": pair.margin,
        "votes": pair.votes,
        "votes_chosen": pair.votes_chosen,
        "votes_rejected": pair.votes_rejected,
        "votes_tie": pair.votes_tie,
        "agreement": pair.agreement,
        "tie": pair.tie,
        "both_bad": pair.both_bad,
        "prompt_id": prompts[pair.prompt_id].external_id,
        "task_id": pair.task_id,
        "chosen_id": pair.chosen.id,
        "rejected_id": pair.rejected.id,
        "chosen_model_version": pair.chosen.model_version,
        "rejected_model_version": pair.rejected.model_version,
    }


def _unpaired_rows(
    snapshot: DatasetSnapshot, prompts: dict[int, _Prompt], responses: dict[int, _Response], rendered: dict[int, Any]
) -> Iterator[dict[str, Any]]:
    project = snapshot.project
    for rated in _rated(snapshot, prompts, responses):
        yield {
            "prompt": rendered[rated.prompt_id],
            "completion": _completion(rated.response.content, snapshot.style),
            # mean > midpoint, in whole numbers: total / n > (min + max) / 2
            "label": 2 * rated.total > (project.rating_min + project.rating_max) * rated.ratings,
            "score": rated.total / rated.ratings,
            "ratings": rated.ratings,
            "prompt_id": prompts[rated.prompt_id].external_id,
            "response_id": rated.response.id,
            "model_version": rated.response.model_version,
        }


def _vote_rows(
    snapshot: DatasetSnapshot, prompts: dict[int, _Prompt], responses: dict[int, _Response], rendered: dict[int, Any]
) -> Iterator[dict[str, Any]]:
    annotations = list(
        _annotations(snapshot, prompts)
        .order_by("task__prompt_id", "task_id", "id")
        .values_list(
            "id", "task_id", "task__prompt_id", "task__kind", "task__round_number", "source", "annotator_id",
            "annotator__username", "score", "labels", "choice", "strength", "both_bad", "ranking", "comment",
            "time_spent", "assignment__shown_order", "created_at",
        )
    )  # fmt: skip
    by_task = _task_responses(snapshot, prompts, responses, TaskKind.values)
    reveal = snapshot.filters["reveal_annotators"]
    for (
        annotation_id, task_id, prompt_id, kind, round_number, source, annotator_id, username, score, labels,
        choice, strength, both_bad, ranking, comment, time_spent, shown_order, created_at,
    ) in annotations:  # fmt: skip
        rating, pairwise = kind == TaskKind.RATING, kind == TaskKind.PAIRWISE
        yield {
            "annotation_id": annotation_id,
            "task_id": task_id,
            "kind": kind,
            "split": prompts[prompt_id].split,
            "round": round_number,
            "prompt_id": prompts[prompt_id].external_id,
            "prompt": rendered[prompt_id],
            "response_ids": [response.id for response in by_task[task_id]],
            "responses": [response.content for response in by_task[task_id]],
            "source": source,
            "annotator": (username if reveal else _pseudonym(annotator_id)) if annotator_id else None,
            "score": score if rating else None,
            "labels": labels if rating else None,
            "choice": choice if pairwise else None,
            "strength": strength if pairwise else None,
            "both_bad": both_bad if pairwise else None,
            "ranking": ranking if kind == TaskKind.RANKING else None,
            "comment": comment,
            "time_spent": time_spent.total_seconds() if time_spent is not None else None,
            "shown_order": shown_order,
            "created_at": created_at.astimezone(UTC).isoformat(),
        }


def _pseudonym(user_id: int) -> str:
    """A stable stand-in for a user: keyed, so it cannot be reversed by hashing every id."""
    return hmac.new(settings.SECRET_KEY.encode(), str(user_id).encode(), hashlib.sha256).hexdigest()[:16]


def _sft_rows(
    snapshot: DatasetSnapshot, prompts: dict[int, _Prompt], responses: dict[int, _Response], rendered: dict[int, Any]
) -> Iterator[dict[str, Any]]:
    options = snapshot.filters
    best = {(pair.prompt_id, pair.chosen.id): pair.chosen for pair in _chunk_pairs(snapshot, prompts, responses)}
    if not options["annotator"]:  # a response does not record who wrote it
        human = Response.objects.filter(id__in=[r.id for r in responses.values() if r.source == Response.Source.HUMAN])
        if options["round"] is not None:
            human = human.filter(task_responses__task__round_number=options["round"]).distinct()
        if options["since"]:
            human = human.filter(created_at__gte=options["since"])
        if options["until"]:
            human = human.filter(created_at__lt=options["until"])
        for prompt_id, response_id in human.values_list("prompt_id", "id"):
            best[prompt_id, response_id] = responses[response_id]
    for (prompt_id, _), response in sorted(best.items(), key=itemgetter(0)):
        if snapshot.style == Style.CONVERSATIONAL:
            text = {"messages": [*rendered[prompt_id], *_completion(response.content, Style.CONVERSATIONAL)]}
        else:
            text = {"prompt": rendered[prompt_id], "completion": response.content}
        yield {
            **text,
            "prompt_id": prompts[prompt_id].external_id,
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
            ("tie", boolean), ("both_bad", boolean), ("prompt_id", string), ("task_id", i64), ("chosen_id", i64),
            ("rejected_id", i64), ("chosen_model_version", i64), ("rejected_model_version", i64),
        ]  # fmt: skip
    elif kind == Kind.UNPAIRED:
        fields = [
            ("prompt", text), ("completion", text), ("label", boolean), ("score", f64), ("ratings", i64),
            ("prompt_id", string), ("response_id", i64), ("model_version", i64),
        ]  # fmt: skip
    elif kind == Kind.VOTES:
        fields = [
            ("annotation_id", i64), ("task_id", i64), ("kind", string), ("split", string), ("round", i64),
            ("prompt_id", string), ("prompt", text), ("response_ids", pa.list_(i64)),
            ("responses", pa.list_(string)), ("source", string), ("annotator", string), ("score", i64),
            ("labels", pa.list_(string)), ("choice", string), ("strength", i64), ("both_bad", boolean),
            ("ranking", pa.list_(pa.list_(i64))), ("comment", string), ("time_spent", f64),
            ("shown_order", pa.list_(i64)), ("created_at", string),
        ]  # fmt: skip
    else:
        if style == Style.CONVERSATIONAL:
            fields = [("messages", messages)]
        else:
            fields = [("prompt", string), ("completion", string)]
        fields += [("prompt_id", string), ("response_id", i64), ("source", string), ("model_version", i64)]
    return pa.schema(fields)


def _write(snapshot: DatasetSnapshot, rows: Iterator[dict[str, Any]], out: IO[bytes]) -> int:
    """Write the rows to `out` CHUNK_SIZE at a time, recording progress after each; returns how many."""
    if snapshot.format == Format.PARQUET:
        return _write_parquet(snapshot, rows, out)
    count = 0
    while batch := list(islice(rows, CHUNK_SIZE)):
        # ASCII (non-ASCII characters as \u escapes): the same JSON to any reader, and twice as fast to encode.
        out.write("".join(json.dumps(row) + "\n" for row in batch).encode())
        count += len(batch)
        _progress(snapshot, count)
    out.flush()
    return count


def _write_parquet(snapshot: DatasetSnapshot, rows: Iterator[dict[str, Any]], out: IO[bytes]) -> int:
    # Imported here: pyarrow costs some 50 MB of memory, which a JSON Lines export does without.
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = _schema(snapshot.kind, snapshot.style)
    count = 0
    with pq.ParquetWriter(out, schema) as writer:
        while batch := list(islice(rows, CHUNK_SIZE)):
            writer.write_table(pa.Table.from_pylist(batch, schema=schema))
            count += len(batch)
            _progress(snapshot, count)
    out.flush()
    return count


def _progress(snapshot: DatasetSnapshot, rows_written: int) -> None:
    DatasetSnapshot.objects.filter(pk=snapshot.pk).update(rows_written=rows_written)


def _sha256(file: IO[bytes]) -> str:
    file.seek(0)
    return hashlib.file_digest(file, "sha256").hexdigest()
