"""Import prompts, responses and existing preference pairs from JSONL or CSV (optionally gzipped).

The one import path: the admin upload, `manage.py import_data`, the API and import jobs (annotate/import_jobs.py,
for big uploads) all call `import_file`.
An import is all or nothing: rows are parsed and written in batches inside one transaction, and the
first bad row raises ImportFailed (naming the line and field) and rolls everything back.

Limits, so that no file can take a worker's memory however it is made: the file's content (decompressed, for
gzip) is at most ARBITER_IMPORT_MAX_BYTES, one text in it at most ARBITER_IMPORT_MAX_FIELD_BYTES, one row at most
ROW_FIELDS such texts, and a field's JSON nests at most MAX_NESTING deep. Each is checked while reading, before
anything larger is held.

Formats, detected from the first row's fields unless forced:
- prompts:     prompt | messages, [id, split, metadata]
- responses:   the prompt fields + responses (list) | response | response_1…response_N (CSV)
- preferences: chosen + rejected, [prompt] — TRL standard (strings), TRL conversational (message
               lists, explicit or implicit prompt) and HH-RLHF transcripts ("\n\nHuman: …").
- demonstrations: TRL's SFT formats — messages ending in an assistant message (the reply), or prompt (text or
               messages) + completion (text or a list of one assistant message); the sft export's own columns
               (prompt_id, used as the id, response_id, source, model_version) are accepted, so an export reads
               back. Each makes a human Response (source human, no author: it is a person's answer, which is what
               SFT trains on) and no task.

Write tasks (TaskKind.WRITE, where the project enables it): a prompts row makes one, the annotator writing the reply
from nothing; a responses row with exactly one response makes one with that response as the draft the annotator
starts from and edits (beside the rating task the row makes where ratings are enabled).

Gold tasks (a known answer, mixed into annotators' queues to measure them; see Task.Status.GOLD): a preference row
with `"gold": true` makes a gold pairwise task whose gold answer is `chosen` (instead of an imported vote); a
responses row with one response and a `gold_score` makes a gold rating task of it with that score. The gold answer is
checked as an annotator's would be (annotate/answers.py), and the project must enable the task's kind, or the queue
would never serve it. A gold row whose task already exists and is not gold is refused: the known answer would be
dropped in silence.

Rows are keyed by the prompt's external id (its `id`, else a hash of its messages). An existing prompt
is reused, never changed; a response whose exact text its prompt already has is reused; a task is made
only when no task of its kind over exactly those responses exists. Re-importing a file is a no-op.

Texts that are the same but for whitespace (annotate.models.text_key) are one answer: a row keeps the first of
them, so no task compares an answer with itself (two responses that were three make a pairwise task, not a
ranking), and a preference whose chosen and rejected are the same is refused.
"""

import csv
import gzip
import hashlib
import io
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import chain, combinations
from pathlib import Path
from typing import IO, Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import DEFAULT_DB_ALIAS, IntegrityError, connections, models, transaction
from django.db.models import Max
from django.utils import timezone

from annotate.answers import clean_answer
from annotate.models import Annotation, Project, Prompt, Response, Task, TaskKind, TaskResponse, text_key, unique_texts

FORMATS = ("prompts", "responses", "preferences", "demonstrations")
BATCH_SIZE = 2000
# A batch also ends once it holds this much of the file, so a batch of long rows takes no more memory than one
# of short rows (2,000 rows of a typical 2.5 KB are 5 MB).
BATCH_BYTES = 8 * 2**20
# A row (a JSONL line, or a CSV record, which may span lines) may be this many times ARBITER_IMPORT_MAX_FIELD_BYTES:
# room for a prompt, several responses and metadata near the limit with JSON's escapes on top (`\"`, `\n`, and
# `\u00e9` for `é` where the writer escaped non-ASCII), while reading one row stays a bounded cost.
ROW_FIELDS = 8
# Lists and objects within one field's value. The json module recurses a level at a time and fails at about 1,000
# (a RecursionError, not a message); no dataset nests a field anywhere near 64 (tool calls and JSON Schemas in
# metadata stay under 20), and jsonb and SQLite's JSON take far more.
MAX_NESTING = 64
_INSERT_CHUNK = 500  # rows per SQLite INSERT: 500 × 9 columns stays under its parameter limit
ROLES = ("system", "user", "assistant")

PROMPT_FIELDS = {"id", "prompt", "messages", "split", "metadata"}
RESPONSE_FIELDS = PROMPT_FIELDS | {"responses", "response", "gold_score"}
PREFERENCE_FIELDS = {"id", "prompt", "chosen", "rejected", "split", "metadata", "gold"}
# The sft export's columns besides the text: read back, prompt_id is the row's id and the rest says nothing new.
SFT_EXPORT_FIELDS = {"prompt_id", "response_id", "source", "model_version"}
DEMONSTRATION_FIELDS = {"id", "prompt", "messages", "completion", "split", "metadata"} | SFT_EXPORT_FIELDS
_RESPONSE_COLUMN = re.compile(r"^response_(\d+)$")
_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


class ImportFailed(ValueError):
    """Bad input: says which line and field, and nothing was written."""

    def __init__(self, message: str, *, line: int | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.message, self.line, self.field = message, line, field

    def __str__(self) -> str:
        where = []
        if self.line is not None:
            where.append(f"line {self.line}")
        if self.field is not None:
            where.append(f"field {self.field!r}")
        return f"{', '.join(where)}: {self.message}" if where else self.message


@dataclass
class ImportResult:
    format: str
    filetype: str
    rows: int = 0
    prompts_created: int = 0
    prompts_existing: int = 0
    responses_created: int = 0
    tasks_created: int = 0
    annotations_created: int = 0
    gold_tasks_created: int = 0  # of tasks_created; each has one gold answer, counted in annotations_created

    def __str__(self) -> str:
        gold = f" ({self.gold_tasks_created} gold)" if self.gold_tasks_created else ""
        return (
            f"{self.rows} {self.format} rows ({self.filetype}): {self.prompts_created} prompts created, "
            f"{self.prompts_existing} rows for prompts that already existed, {self.responses_created} responses, "
            f"{self.tasks_created} tasks{gold}, {self.annotations_created} imported annotations"
        )


@dataclass
class Row:
    line: int
    external_id: str
    messages: list[dict[str, str]]
    split: str
    metadata: dict[str, Any]
    responses: list[str]
    chosen: str | None = None  # preferences: the text of the preferred response
    gold: str | None = None  # the field that makes the row gold ("gold" or "gold_score"); None: not gold
    gold_score: Any = None  # responses: the one response's known score, as given
    demonstration: bool = False  # its one response is a person's answer (source human), and it asks for no task
    # Filled in while writing:
    response_ids: list[int] = field(default_factory=list)


def import_file(
    project: Project,
    source: str | Path | IO[bytes],
    *,
    format: str | None = None,
    progress: Callable[[int], object] | None = None,
) -> ImportResult:
    """Import a JSONL or CSV file (path or binary file object) into `project`; all or nothing.

    progress(rows), if given, is called after each batch with the rows read so far (all committed at the end).
    """
    if format is not None and format not in FORMATS:
        raise ImportFailed(f"unknown format {format!r} (use one of {', '.join(FORMATS)})")
    stream = open(source, "rb") if isinstance(source, str | Path) else source  # noqa: SIM115
    try:
        check_size(stream)
        lines = _Lines(_maybe_gunzip(stream))
        filetype, header, records = _records(lines)
        if header is not None:
            format = format or _detect_format(1, dict.fromkeys(header))
            _check_fields(format, 1, header)
        first = next(records, None)
        if first is None:
            raise ImportFailed("the file has no rows")
        format = format or _detect_format(*first)
        result = ImportResult(format=format, filetype=filetype)
        last_prompt_before = Prompt.objects.aggregate(last=Max("id"))["last"] or 0
        try:
            with transaction.atomic():
                for batch in _batched(chain([first], records), lines):
                    rows = [_parse_row(format, line, record) for line, record in batch]
                    _write_batch(project, rows, result, last_prompt_before)
                    if progress is not None:
                        progress(result.rows)
                # Last, so the project's row (which completing submissions update too) is held only to commit.
                # Each imported annotation completes the task made for it; gold tasks are no part of the progress.
                gold = result.gold_tasks_created
                project.count_tasks(added=result.tasks_created - gold, completed=result.annotations_created - gold)
        except IntegrityError:
            # Only a concurrent import of the same ids gets here: this one saw them absent, then collided.
            raise ImportFailed("another import added the same prompts at the same time; import again") from None
        return result
    finally:
        if stream is not source:
            stream.close()


# Reading ------------------------------------------------------------------------------------------


def check_size(stream: IO[bytes]) -> None:
    """Refuse a file over the limit before reading it, where its size is known (see also _decoded_lines)."""
    size = getattr(stream, "size", None)
    if size is None and stream.seekable():
        size = stream.seek(0, os.SEEK_END)
        stream.seek(0)
    if size is not None and size > settings.ARBITER_IMPORT_MAX_BYTES:
        raise too_large(f"the file is {size:,} bytes")


def too_large(what: str) -> ImportFailed:
    limit = settings.ARBITER_IMPORT_MAX_BYTES
    return ImportFailed(f"{what}, over the limit of {limit:,} bytes (ARBITER_IMPORT_MAX_BYTES)")


def _maybe_gunzip(stream: IO[bytes]) -> IO[bytes]:
    head = stream.read(2)
    rest = io.BufferedReader(_Prepend(head, stream))
    return gzip.GzipFile(fileobj=rest) if head == b"\x1f\x8b" else rest


class _Prepend(io.RawIOBase):
    """A stream that gives back bytes already read from it, then the rest (works unseekable too)."""

    def __init__(self, head: bytes, stream: IO[bytes]) -> None:
        self.head, self.stream = head, stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.head or self.stream.read(len(buffer))
        self.head = self.head[len(buffer) :] if self.head else b""
        data = data[: len(buffer)]
        buffer[: len(data)] = data
        return len(data)


def _batched(records: Iterator[Any], lines: "_Lines") -> Iterator[list[Any]]:
    """BATCH_SIZE records at a time, or fewer where they fill BATCH_BYTES of the file first."""
    batch, start = [], 0
    for record in records:
        batch.append(record)
        if len(batch) == BATCH_SIZE or lines.read - start >= BATCH_BYTES:
            yield batch
            batch, start = [], lines.read
    if batch:
        yield batch


class _Lines:
    """The stream's lines as (number, text), none taken more than a byte past the row limit or the size limit."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream
        self.max_bytes = settings.ARBITER_IMPORT_MAX_BYTES
        self.max_row = ROW_FIELDS * settings.ARBITER_IMPORT_MAX_FIELD_BYTES
        self.read = 0  # bytes so far, decompressed; batches and CSV records are measured by it too

    def __iter__(self) -> Iterator[tuple[int, str]]:
        number = 0
        try:
            # readline with a size stops there, whether or not the line goes on (gzip's does too, decompressing no
            # more than that): a line with no end, or a gzip bomb, costs no more than the limits.
            while raw := self.stream.readline(min(self.max_row, self.max_bytes - self.read) + 1):
                number += 1
                self.read += len(raw)
                if self.read > self.max_bytes:
                    raise too_large("the file's content runs longer")
                if len(raw) > self.max_row and not raw.endswith(b"\n"):
                    raise _row_too_long(number, self.max_row)
                try:
                    # Decoding line by line is exact: a newline byte never occurs inside a UTF-8 sequence.
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as error:
                    byte = error.object[error.start]
                    raise ImportFailed(f"not valid UTF-8 (byte {byte:#04x})", line=number) from None
                if number == 1:
                    text = text.removeprefix("\ufeff")
                yield number, text
        except (OSError, EOFError, gzip.BadGzipFile) as error:
            raise ImportFailed(f"could not read the file: {error}") from None


def _row_too_long(line: int, max_row: int) -> ImportFailed:
    return ImportFailed(
        f"the row is longer than {max_row:,} bytes, the most one row may hold "
        f"({ROW_FIELDS} × ARBITER_IMPORT_MAX_FIELD_BYTES)",
        line=line,
    )


def _records(lines: _Lines) -> tuple[str, list[str] | None, Iterator[tuple[int, dict[str, Any]]]]:
    """Detect JSONL (first non-blank character `{`) or CSV; give the CSV header and the (line, record) pairs."""
    numbered = iter(lines)
    buffered: list[tuple[int, str]] = []
    for number, text in numbered:
        buffered.append((number, text))
        if text.strip():
            break
    else:
        raise ImportFailed("the file is empty")
    if text.lstrip().startswith("{"):
        return "jsonl", None, _jsonl_records(chain(buffered, numbered))
    # The csv module refuses cells over 128 KiB by default, and a long response is legitimate. Our own limit on a
    # record (_CsvLines) holds a cell to less than this, and names the line; this only has to be no lower.
    csv.field_size_limit(lines.max_row)
    feed = _CsvLines(chain(buffered, numbered), lines)
    reader = csv.reader(feed, strict=True)
    header = [column.strip() for column in _csv_row(reader, feed)]
    if duplicates := sorted({c for c in header if header.count(c) > 1}):
        raise ImportFailed("column appears twice in the header", line=1, field=duplicates[0])
    return "csv", header, _csv_records(reader, feed, header)


def _jsonl_records(lines: Iterable[tuple[int, str]]) -> Iterator[tuple[int, dict[str, Any]]]:
    for number, text in lines:
        if not text.strip():
            continue
        _check_nesting(text, number)
        try:
            record = json.loads(text)
        except json.JSONDecodeError as error:
            raise ImportFailed(f"malformed JSON: {error.msg} (column {error.colno})", line=number) from None
        if not isinstance(record, dict):
            raise ImportFailed("each line must be a JSON object", line=number)
        yield number, record


class _CsvLines:
    """The lines the csv reader reads: it knows the last one's number, and refuses a record that runs too long."""

    def __init__(self, lines: Iterator[tuple[int, str]], counter: _Lines) -> None:
        self.lines, self.counter = lines, counter
        self.line = 0  # the last line read
        self.start, self.start_bytes = 1, 0  # where the record being read began

    def __iter__(self) -> "_CsvLines":
        return self

    def __next__(self) -> str:
        self.line, text = next(self.lines)
        # Each line is within the limit, but a quoted cell may span any number of them.
        if self.counter.read - self.start_bytes > self.counter.max_row:
            raise _row_too_long(self.start, self.counter.max_row)
        return text

    def next_record(self) -> None:
        self.start, self.start_bytes = self.line + 1, self.counter.read


def _csv_row(reader: Iterator[list[str]], feed: _CsvLines) -> list[str] | None:
    try:
        return next(reader, None)
    except csv.Error as error:
        raise ImportFailed(f"malformed CSV: {error}", line=feed.line or None) from None


def _csv_records(
    reader: Iterator[list[str]], feed: _CsvLines, header: list[str]
) -> Iterator[tuple[int, dict[str, Any]]]:
    while True:
        feed.next_record()
        start = feed.start  # a quoted cell may span lines: name the line the row starts on
        cells = _csv_row(reader, feed)
        if cells is None:
            return
        if not any(cell.strip() for cell in cells):
            continue
        if len(cells) != len(header):
            raise ImportFailed(f"{len(cells)} cells, but the header has {len(header)} columns", line=start)
        # A blank cell is an absent value, so optional columns may be left empty.
        yield start, {column: cell for column, cell in zip(header, cells, strict=True) if cell.strip()}


# Parsing ------------------------------------------------------------------------------------------


def _detect_format(line: int, record: dict[str, Any]) -> str:
    keys = set(record)
    if {"chosen", "rejected"} & keys:
        return "preferences"
    if "completion" in keys or _ends_with_reply(record.get("messages"), line):
        return "demonstrations"
    if {"responses", "response"} & keys or any(_RESPONSE_COLUMN.match(key) for key in keys):
        return "responses"
    if {"prompt", "messages"} & keys:
        return "prompts"
    raise ImportFailed(
        "cannot tell the format: expected prompt or messages (prompts), responses (prompt + responses) "
        f"or chosen and rejected (preference pairs); found {', '.join(sorted(keys)) or 'no fields'}",
        line=line,
    )


def _ends_with_reply(messages: Any, line: int) -> bool:
    """Whether a messages field (a list, or JSON text in a CSV cell) ends with an assistant message: TRL's SFT form."""
    if isinstance(messages, str):
        _check_nesting(messages, line, "messages")
        try:
            messages = json.loads(messages)
        except ValueError:
            return False  # the prompts format's own parsing says what is wrong with it
    return (
        isinstance(messages, list)
        and bool(messages)
        and isinstance(messages[-1], dict)
        and (messages[-1].get("role") == "assistant")
    )


# Why a gold field does not fit a row of another format: "unknown field" alone would not say how to make it gold.
_GOLD_MISPLACED = {
    "gold": "gold makes a preference row's chosen the known answer, and this row has no chosen and rejected (to make "
    "a rated response gold, give gold_score)",
    "gold_score": "gold_score is the known score of a responses row's one response, and this is a "
    "{format} row (to make a preference pair gold, give gold: true)",
}


def _check_fields(format: str, line: int, fields: Iterable[str]) -> None:
    allowed = {
        "prompts": PROMPT_FIELDS,
        "responses": RESPONSE_FIELDS,
        "preferences": PREFERENCE_FIELDS,
        "demonstrations": DEMONSTRATION_FIELDS,
    }[format]
    for key in fields:
        if key in _GOLD_MISPLACED and key not in allowed:
            raise ImportFailed(_GOLD_MISPLACED[key].format(format=format), line=line, field=key)
        if key not in allowed and not (format == "responses" and _RESPONSE_COLUMN.match(key)):
            raise ImportFailed(
                f"unknown field for {format} (expected {', '.join(sorted(allowed))})", line=line, field=key
            )


def _parse_row(format: str, line: int, record: dict[str, Any]) -> Row:
    _check_fields(format, line, record)
    max_text = settings.ARBITER_IMPORT_MAX_FIELD_BYTES
    for name, value in record.items():
        _check_texts(value, line, name, max_text)
    split = record.get("split", Prompt.Split.TRAIN)
    if split not in Prompt.Split.values:
        raise ImportFailed(f"must be 'train' or 'eval', not {split!r}", line=line, field="split")
    metadata = _json_field(record, "metadata", line, default={})
    if not isinstance(metadata, dict):
        raise ImportFailed("must be an object", line=line, field="metadata")
    if metadata and not isinstance(record["metadata"], str):
        # JSONL gives it as a value: it counts as JSON text, as a CSV cell gives it (and was measured above).
        _check_length(json.dumps(metadata, ensure_ascii=False, separators=(",", ":")), line, "metadata", max_text)

    chosen, gold = None, None
    if format == "demonstrations":
        messages, reply = _parse_demonstration(record, line)
        if record.get("id") is None and record.get("prompt_id") is not None:
            record = {**record, "id": record["prompt_id"]}
        return Row(line, _external_id(record, messages, line), messages, split, metadata, [reply], demonstration=True)
    if format == "preferences":
        messages, responses, chosen = _parse_preference(record, line)
        gold = "gold" if _parse_gold(record, line) else None
    else:
        messages = _prompt_messages(record, line)
        responses = _parse_responses(record, line) if format == "responses" else []
        if record.get("gold_score") is not None:
            if len(responses) != 1:
                raise ImportFailed(
                    f"a gold score rates one response: give exactly one, not {len(responses)}",
                    line=line,
                    field="gold_score",
                )
            gold = "gold_score"
    return Row(
        line=line,
        external_id=_external_id(record, messages, line),
        messages=messages,
        split=split,
        metadata=metadata,
        responses=responses,
        chosen=chosen,
        gold=gold,
        gold_score=record.get("gold_score"),
    )


def _parse_gold(record: dict[str, Any], line: int) -> bool:
    """A preference row's `gold`: true or false (JSON), or the same words, 1 or 0 (a CSV cell)."""
    value = record.get("gold", False)
    if isinstance(value, str):
        value = {"true": True, "1": True, "false": False, "0": False}.get(value.strip().lower(), value)
    if not isinstance(value, bool):
        raise ImportFailed(f"must be true or false, not {value!r}", line=line, field="gold")
    return value


def _check_texts(value: Any, line: int, name: str, max_text: int) -> None:
    """Refuse a field holding what no database stores (a NUL, half a surrogate pair, NaN or an infinity) anywhere,
    or any one text over ARBITER_IMPORT_MAX_FIELD_BYTES."""
    if isinstance(value, str):
        # PostgreSQL refuses NUL in text and JSON; refusing it here keeps SQLite and PostgreSQL alike.
        if "\x00" in value:
            raise ImportFailed("contains a NUL character (\\u0000), which cannot be stored", line=line, field=name)
        # JSON's "\ud800" escape decodes to half of a UTF-16 pair, which no UTF-8 text can hold.
        if surrogate := _SURROGATE.search(value):
            code = f"\\u{ord(surrogate.group()):04x}"
            raise ImportFailed(f"contains {code}, half of a surrogate pair, which is not text", line=line, field=name)
        _check_length(value, line, name, max_text)
    elif isinstance(value, float) and not math.isfinite(value):
        # The json module reads NaN and Infinity, which JSON itself (and jsonb) has not.
        raise ImportFailed(f"holds {value}, which is not a JSON number", line=line, field=name)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_texts(key, line, name, max_text)
            _check_texts(item, line, name, max_text)
    elif isinstance(value, list):
        for item in value:
            _check_texts(item, line, name, max_text)


def _check_length(text: str, line: int, name: str, max_text: int) -> None:
    # A character is 1 to 4 bytes of UTF-8: only a text whose length leaves it open is encoded to count them.
    if len(text) * 4 > max_text and (size := len(text.encode("utf-8", "surrogatepass"))) > max_text:
        raise ImportFailed(
            f"a text of {size:,} bytes, over the limit of {max_text:,} (ARBITER_IMPORT_MAX_FIELD_BYTES)",
            line=line,
            field=name,
        )


_SURROGATE = re.compile("[\ud800-\udfff]")

# A JSON string (skipped whole, closed or not, so that a scan is linear) or a bracket.
_JSON_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?|[\[\]{}]', re.DOTALL)


def _check_nesting(text: str, line: int, field: str | None = None) -> None:
    """Refuse JSON text nested deeper than MAX_NESTING before the json module recurses into it.

    `text` is a JSONL line (an object holding the fields, which names the field) or a CSV cell (`field`'s value).
    """
    limit = MAX_NESTING if field else MAX_NESTING + 1
    if text.count("[") + text.count("{") <= limit:
        return  # too few brackets to be too deep, strings included: most rows end here
    depth, key, in_object = 0, None, field is None and text.lstrip().startswith("{")
    for token in _JSON_TOKEN.finditer(text):
        char = text[token.start()]
        if char == '"':
            if depth == 1 and in_object:
                key = token  # the last string at the top before a nested value is that value's key
        elif char in "[{":
            depth += 1
            if depth > limit:
                name = field or (key and key.group()[1:-1])
                raise ImportFailed(f"nested more than {MAX_NESTING} lists or objects deep", line=line, field=name)
        else:
            depth -= 1


def _json_field(record: dict[str, Any], name: str, line: int, default: Any = None) -> Any:
    """A field that JSONL holds as a value and CSV as JSON text."""
    value = record.get(name, default)
    if isinstance(value, str) and name in {"metadata", "messages"}:
        _check_nesting(value, line, name)
        try:
            value = json.loads(value)
        except json.JSONDecodeError as error:
            raise ImportFailed(f"not valid JSON: {error.msg}", line=line, field=name) from None
        # Its escapes are decoded only now: "\u0000" in the cell was six harmless characters until here.
        _check_texts(value, line, name, settings.ARBITER_IMPORT_MAX_FIELD_BYTES)
    return value


def _external_id(record: dict[str, Any], messages: list[dict[str, str]], line: int) -> str:
    value = record.get("id")
    if isinstance(value, str):
        value = value.strip()
    if value is None or value == "":
        canonical = json.dumps(messages, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
        return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()[:32]
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ImportFailed("must be a string or an integer", line=line, field="id")
    value = str(value)
    if len(value) > 255:
        raise ImportFailed("longer than 255 characters", line=line, field="id")
    return value


def _prompt_messages(record: dict[str, Any], line: int) -> list[dict[str, str]]:
    if "prompt" in record and "messages" in record:
        raise ImportFailed("give prompt or messages, not both", line=line, field="messages")
    if "messages" in record:
        return _messages(_json_field(record, "messages", line), line, "messages", ends_with="user")
    prompt = record.get("prompt")
    if prompt is None:
        raise ImportFailed("missing", line=line, field="prompt")
    if isinstance(prompt, str):
        if not prompt.strip():
            raise ImportFailed("is empty", line=line, field="prompt")
        return [{"role": "user", "content": prompt}]
    if not isinstance(prompt, list):
        raise ImportFailed("must be text or a list of messages", line=line, field="prompt")
    return _messages(prompt, line, "prompt", ends_with="user")


def _messages(value: Any, line: int, name: str, ends_with: str | None = None) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise ImportFailed('must be a non-empty list of {"role": …, "content": …} messages', line=line, field=name)
    messages = []
    for index, message in enumerate(value, start=1):
        if not isinstance(message, dict) or set(message) - {"role", "content"}:
            raise ImportFailed(f'message {index} must be {{"role": …, "content": …}}', line=line, field=name)
        if message.get("role") not in ROLES:
            raise ImportFailed(
                f"message {index} has role {message.get('role')!r}, not one of {ROLES}", line=line, field=name
            )
        if not isinstance(message.get("content"), str):
            raise ImportFailed(f"message {index} content must be text", line=line, field=name)
        messages.append({"role": message["role"], "content": message["content"]})
    if ends_with and messages[-1]["role"] != ends_with:
        raise ImportFailed(f"the last message must be from the {ends_with}", line=line, field=name)
    return messages


def _parse_responses(record: dict[str, Any], line: int) -> list[str]:
    if "responses" in record:
        name, values = "responses", record["responses"]
        if not isinstance(values, list):
            raise ImportFailed("must be a list of strings", line=line, field=name)
    elif "response" in record:
        name, values = "response", [record["response"]]
    else:
        columns = sorted((int(m[1]), key) for key in record if (m := _RESPONSE_COLUMN.match(key)))
        if not columns:
            raise ImportFailed("missing", line=line, field="responses")
        name, values = columns[0][1], [record[key] for _, key in columns]
    for index, value in enumerate(values, start=1):
        if not isinstance(value, str):
            raise ImportFailed(f"response {index} must be a string", line=line, field=name)
        if not value.strip():
            raise ImportFailed(f"response {index} is empty", line=line, field=name)
    if not values:
        raise ImportFailed("must hold at least one response", line=line, field=name)
    return unique_texts(values)


def _parse_demonstration(record: dict[str, Any], line: int) -> tuple[list[dict[str, str]], str]:
    """A TRL SFT row: (the prompt's messages, the reply), from messages ending in the reply or prompt + completion."""
    if "completion" in record:
        if "messages" in record:
            raise ImportFailed("give messages (ending in the reply) or prompt and completion, not both", line=line)
        messages = _prompt_messages(record, line)
        name, reply = "completion", _completion(_json_field(record, "completion", line), line, "completion")
    else:
        if "messages" not in record:
            raise ImportFailed("missing: give messages ending in the reply, or prompt and completion", line=line)
        conversation = _messages(_json_field(record, "messages", line), line, "messages", ends_with="assistant")
        messages, name, reply = conversation[:-1], "messages", conversation[-1]["content"]
        if not messages or messages[-1]["role"] != "user":
            raise ImportFailed("the messages before the reply must end with a user message", line=line, field=name)
    if not reply.strip():
        raise ImportFailed("the reply is empty", line=line, field=name)
    return messages, reply


def _parse_preference(record: dict[str, Any], line: int) -> tuple[list[dict[str, str]], list[str], str]:
    for name in ("chosen", "rejected"):
        if name not in record:
            raise ImportFailed("missing", line=line, field=name)
    chosen, rejected = record["chosen"], record["rejected"]
    if record.get("prompt") is None:
        if isinstance(chosen, str) and isinstance(rejected, str):
            messages, chosen, rejected = _split_hh(chosen, rejected, line)
        elif isinstance(chosen, list) and isinstance(rejected, list):
            messages, chosen, rejected = _split_conversations(chosen, rejected, line)
        else:
            raise ImportFailed(
                "chosen and rejected must both be strings or both message lists", line=line, field="chosen"
            )
    else:
        messages = _prompt_messages(record, line)
        chosen, rejected = _completion(chosen, line, "chosen"), _completion(rejected, line, "rejected")
    # A preference between one answer and itself says nothing, and would train on noise.
    if text_key(chosen) == text_key(rejected):
        what = "the same text" if chosen == rejected else "the same text but for whitespace"
        raise ImportFailed(f"chosen and rejected are {what}", line=line, field="rejected")
    # Empty sides are kept: "say nothing" can be the preferred answer (HH-RLHF has such pairs).
    return messages, [chosen, rejected], chosen


def _completion(value: Any, line: int, name: str) -> str:
    """A preference side: a string, or a conversational list holding one assistant message."""
    if isinstance(value, str):
        return value
    messages = _messages(value, line, name)
    if len(messages) != 1 or messages[0]["role"] != "assistant":
        raise ImportFailed("must hold exactly one assistant message", line=line, field=name)
    return messages[0]["content"]


def _split_conversations(chosen: list, rejected: list, line: int) -> tuple[list[dict[str, str]], str, str]:
    """Implicit-prompt conversations: the shared messages are the prompt, the last message each answer."""
    chosen = _messages(chosen, line, "chosen", ends_with="assistant")
    rejected = _messages(rejected, line, "rejected", ends_with="assistant")
    if chosen[:-1] != rejected[:-1]:
        raise ImportFailed("chosen and rejected must share every message but the last", line=line, field="rejected")
    prompt = chosen[:-1]
    if not prompt or prompt[-1]["role"] != "user":
        raise ImportFailed("the shared messages must end with a user message", line=line, field="chosen")
    return prompt, chosen[-1]["content"], rejected[-1]["content"]


def _split_hh(chosen: str, rejected: str, line: int) -> tuple[list[dict[str, str]], str, str]:
    """HH-RLHF transcripts: cut at the last "\\n\\nAssistant:" both sides share (a reply may contain one)."""
    if not chosen.startswith("\n\nHuman:"):
        raise ImportFailed(
            'without a prompt, chosen must be an HH-RLHF transcript ("\\n\\nHuman: …\\n\\nAssistant: …")',
            line=line,
            field="chosen",
        )
    cut = os.path.commonprefix([chosen, rejected]).rfind("\n\nAssistant:")
    if cut < 0:
        raise ImportFailed('the two transcripts share no "\\n\\nAssistant:" turn', line=line, field="rejected")
    parts = _HH_TURN.split(chosen[:cut])  # ['', 'Human', ' text', 'Assistant', ' text', …]
    messages: list[dict[str, str]] = []
    for role, text in zip(parts[1::2], parts[2::2], strict=True):
        # A few transcripts repeat a speaker; chat templates want turns to alternate, so merge them.
        if messages and messages[-1]["role"] == _HH_ROLES[role]:
            messages[-1]["content"] += "\n\n" + text.strip()
        else:
            messages.append({"role": _HH_ROLES[role], "content": text.strip()})
    if not messages or messages[-1]["role"] != "user":
        raise ImportFailed("the shared transcript must end with a Human turn", line=line, field="chosen")
    start = cut + len("\n\nAssistant:")
    return messages, chosen[start:].strip(), rejected[start:].strip()


# Writing ------------------------------------------------------------------------------------------


def _write_batch(project: Project, rows: list[Row], result: ImportResult, last_prompt_before: int) -> None:
    result.rows += len(rows)
    now = timezone.now()
    prompt_ids = dict(
        Prompt.objects.filter(project=project, external_id__in={row.external_id for row in rows}).values_list(
            "external_id", "id"
        )
    )
    known = list(prompt_ids.values())
    result.prompts_existing += sum(0 < prompt_ids.get(row.external_id, 0) <= last_prompt_before for row in rows)

    new_prompts = {}
    for row in rows:
        if row.external_id not in prompt_ids and row.external_id not in new_prompts:
            new_prompts[row.external_id] = (project.id, row.external_id, row.messages, row.metadata, row.split, now)
    fields = ["project", "external_id", "messages", "metadata", "split", "created_at"]
    prompt_ids.update(zip(new_prompts, _insert(Prompt, fields, list(new_prompts.values())), strict=True))
    result.prompts_created += len(new_prompts)

    response_ids = {
        (prompt_id, content): response_id
        for prompt_id, content, response_id in Response.objects.filter(prompt_id__in=known).values_list(
            "prompt_id", "content", "id"
        )
    }
    new_responses = {}
    for row in rows:
        prompt_id = prompt_ids[row.external_id]
        for content in row.responses:
            key = (prompt_id, content)
            if key not in response_ids and key not in new_responses:
                source = Response.Source.HUMAN if row.demonstration else Response.Source.IMPORTED
                new_responses[key] = (prompt_id, content, source, {}, now)
    fields = ["prompt", "content", "source", "generation_params", "created_at"]
    response_ids.update(zip(new_responses, _insert(Response, fields, list(new_responses.values())), strict=True))
    result.responses_created += len(new_responses)
    for row in rows:
        row.response_ids = [response_ids[(prompt_ids[row.external_id], content)] for content in row.responses]

    by_task: dict[int, tuple[int, str, bool, list[int]]] = {}
    for task_id, prompt_id, kind, status, response_id in TaskResponse.objects.filter(
        task__prompt_id__in=known
    ).values_list("task_id", "task__prompt_id", "task__kind", "task__status", "response_id"):
        by_task.setdefault(task_id, (prompt_id, kind, status == Task.Status.GOLD, []))[3].append(response_id)
    # A write task with no draft has no responses: known by its prompt alone.
    for task_id, prompt_id, kind in Task.objects.filter(prompt_id__in=known, task_responses__isnull=True).values_list(
        "id", "prompt_id", "kind"
    ):
        by_task[task_id] = (prompt_id, kind, False, [])
    # (prompt, kind, response ids) → whether that task is gold
    existing_tasks = {(prompt, kind, tuple(sorted(ids))): gold for prompt, kind, gold, ids in by_task.values()}

    tasks, task_response_ids, answers = [], [], []
    for row in rows:
        imported = row.chosen is not None
        for kind, ids in _task_specs(project, row):
            key = (prompt_ids[row.external_id], kind, tuple(sorted(ids)))
            if key in existing_tasks:
                if row.gold and not existing_tasks[key]:
                    raise ImportFailed(
                        f"a {kind} task over these responses already exists and is not gold (in the admin, a complete "
                        "task can be made gold from its majority answer)",
                        line=row.line,
                        field=row.gold,
                    )
                continue
            existing_tasks[key] = row.gold is not None
            # (project, prompt, kind, required_annotations, annotation_count, status, priority, round, created_at)
            status = Task.Status.GOLD if row.gold else Task.Status.COMPLETE if imported else Task.Status.OPEN
            required, answered = (1, 1) if imported or row.gold else (project.overlap, 0)
            tasks.append((project.id, prompt_ids[row.external_id], kind, required, answered, status, 0, 0, now))
            task_response_ids.append(ids)
            if imported or row.gold:
                answers.append((len(tasks) - 1, *_imported_answer(project, row, kind, ids)))
    fields = [
        "project", "prompt", "kind", "required_annotations", "annotation_count", "status", "priority",
        "round_number", "created_at",
    ]  # fmt: skip
    task_ids = _insert(Task, fields, tasks)
    _insert(
        TaskResponse,
        ["task", "response", "position"],
        [
            (task_id, response_id, position)
            for task_id, ids in zip(task_ids, task_response_ids, strict=True)
            for position, response_id in enumerate(ids)
        ],
        returning=False,
    )
    fields = ["task", "source", "score", "choice", "strength", "both_bad", "comment", "labels", "created_at"]
    _insert(
        Annotation,
        fields,
        [
            (
                task_ids[index],
                source,
                a.get("score"),
                a.get("choice", ""),
                a.get("strength"),
                a.get("both_bad", False),
                a["comment"],
                a.get("labels", []),
                now,
            )
            for index, source, a in answers
        ],
        returning=False,
    )
    result.tasks_created += len(tasks)
    result.annotations_created += len(answers)
    result.gold_tasks_created += sum(source == Annotation.Source.GOLD for _, source, _ in answers)


def _imported_answer(project: Project, row: Row, kind: str, ids: list[int]) -> tuple[str, dict[str, Any]]:
    """The answer a preference or gold row gives its task, checked as an annotator's: (source, Annotation fields)."""
    if row.gold and kind not in project.task_kinds:
        raise ImportFailed(
            f"a gold {kind} task is only served where {kind} tasks are enabled: enable them in the project first",
            line=row.line,
            field=row.gold,
        )
    if row.chosen is not None:
        answer = {"choice": "a" if ids[0] == row.response_ids[row.responses.index(row.chosen)] else "b"}
    else:
        answer = {"score": row.gold_score}
    try:
        fields = clean_answer(project, kind, ids, answer)
    except ValidationError as error:
        raise ImportFailed(" ".join(error.messages), line=row.line, field=row.gold) from None
    return (Annotation.Source.GOLD if row.gold else Annotation.Source.IMPORTED), fields


def _insert(model: type[models.Model], fields: list[str], rows: list[tuple], returning: bool = True) -> list[int]:
    """Insert plain tuples in bulk and return the new ids in row order.

    bulk_create spent ~90 % of an import compiling SQL value by value. Here each value goes through
    its field's own get_db_prep_save (so stored values are the same as the ORM's), then PostgreSQL
    gets COPY with ids reserved from the table's sequence, and SQLite multi-row INSERT … RETURNING
    (ids come back in VALUES order, as bulk_create relies on too).
    """
    if not rows:
        return []
    db = connections[DEFAULT_DB_ALIAS]  # the wrapper itself: the `connection` proxy costs a lookup per value
    meta = model._meta
    model_fields = [meta.get_field(name) for name in fields]
    table = db.ops.quote_name(meta.db_table)
    columns = [db.ops.quote_name(field.column) for field in model_fields]
    with db.cursor() as cursor:
        if db.vendor == "postgresql":
            ids: list[int] = []
            if returning:
                cursor.execute(
                    "SELECT nextval(pg_get_serial_sequence(%s, %s)) FROM generate_series(1, %s)",
                    [meta.db_table, meta.pk.column, len(rows)],
                )
                ids = [row[0] for row in cursor.fetchall()]
                columns = [db.ops.quote_name(meta.pk.column), *columns]
            # copy() is psycopg's own: wrap it so its errors become Django's (IntegrityError, …).
            with db.wrap_database_errors, cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
                for index, row in enumerate(rows):
                    values = [field.get_db_prep_save(v, db) for field, v in zip(model_fields, row, strict=True)]
                    copy.write_row([ids[index], *values] if returning else values)
            return ids
        ids = []
        placeholder = "(" + ", ".join(["%s"] * len(fields)) + ")"
        for start in range(0, len(rows), _INSERT_CHUNK):
            chunk = rows[start : start + _INSERT_CHUNK]
            params = [
                field.get_db_prep_save(v, db) for row in chunk for field, v in zip(model_fields, row, strict=True)
            ]
            sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES {', '.join([placeholder] * len(chunk))}"
            if returning:
                cursor.execute(f"{sql} RETURNING {db.ops.quote_name(meta.pk.column)}", params)
                ids.extend(row[0] for row in cursor.fetchall())
            else:
                cursor.execute(sql, params)
        return ids


def _task_specs(project: Project, row: Row) -> list[tuple[str, list[int]]]:
    """The tasks a row asks for: (kind, response ids in position order)."""
    ids = row.response_ids
    if row.chosen is not None:
        # Position by content hash, so the chosen response is not always A.
        by_hash = sorted(
            zip(row.responses, ids, strict=True), key=lambda pair: hashlib.sha256(pair[0].encode()).digest()
        )
        return [(TaskKind.PAIRWISE, [response_id for _, response_id in by_hash])]
    if row.gold:  # a gold score: one rating task (whose kind _imported_answer checks)
        return [(TaskKind.RATING, ids)]
    if row.demonstration:  # an answer already written: nothing to ask
        return []
    kinds = set(project.task_kinds)
    specs = [(TaskKind.RATING, [response_id]) for response_id in ids] if TaskKind.RATING in kinds else []
    if len(ids) <= 1 and TaskKind.WRITE in kinds:  # the one response, if any, is the draft
        specs.append((TaskKind.WRITE, ids))
    if len(ids) == 2 and TaskKind.PAIRWISE in kinds:
        specs.append((TaskKind.PAIRWISE, ids))
    elif len(ids) >= 3 and TaskKind.RANKING in kinds:
        specs.append((TaskKind.RANKING, ids))
    elif len(ids) >= 3 and TaskKind.PAIRWISE in kinds:
        specs.extend((TaskKind.PAIRWISE, list(pair)) for pair in combinations(ids, 2))
    return specs
