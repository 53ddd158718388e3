"""An annotator's answer: from the terms it was shown in to the stored one, and its validation.

The one place that decides what a valid rating, pairwise vote, ranking or written answer is: the task form, the
API and the import all call `clean_answer`, and get back the Annotation fields to store or a ValidationError keyed
by the offending field. A written answer (a write task's `text`, a rating's optional `correction`, "a better
answer") comes back under WRITTEN: Annotation.submit and Annotation.change store it as a human Response.

An annotator answers in displayed terms (A is the first response shown, which may be the task's B).
`answer_from_shown` turns such an answer, from the task page's form or the API's JSON, into the task's
terms that `clean_answer` checks; `form_from_answer` is its inverse, for the page that changes an answer.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.http import QueryDict

if TYPE_CHECKING:
    from annotate.models import Project

RATING_FIELDS = {"score", "labels", "correction", "comment"}
PAIRWISE_FIELDS = {"choice", "strength", "both_bad", "comment"}
RANKING_FIELDS = {"ranking", "comment"}
WRITE_FIELDS = {"text", "comment"}
# clean_answer's key for the text the annotator wrote: not an Annotation column but the Response it points at.
WRITTEN = "written"


@dataclass(frozen=True)
class Preference:
    """A pairwise choice as the task page and the API offer it, in displayed terms."""

    value: str  # what the form and the API send
    text: str
    digit: str  # the number key that picks it on the task page
    arrow: str  # the arrow keys that pick it
    side: str  # the displayed side it prefers: "a", "b" or "tie"
    strength: int | None  # 1 better, 2 much better; None for a tie


PREFERENCES = [
    Preference("a2", "A much better", "1", "⇧←", "a", 2),
    Preference("a1", "A better", "2", "←", "a", 1),
    Preference("tie", "Tie", "3", "T", "tie", None),
    Preference("b1", "B better", "4", "→", "b", 1),
    Preference("b2", "B much better", "5", "⇧→", "b", 2),
]
_PREFERENCE_BY_VALUE = {preference.value: preference for preference in PREFERENCES}


def answer_from_shown(data: Mapping[str, Any], *, kind: str, shown_order: list[int], swapped: bool) -> dict[str, Any]:
    """Turn an answer in displayed terms (the task page's form or the API's JSON) into one for clean_answer.

    `swapped`: the pair was shown the other way round (the task's B as A). The form gives ranks as rank-<id>
    fields, the API as a `ranks` object; an error about one is keyed rank-<id> either way.
    """
    comment = data.get("comment", "")
    if kind == "write":
        return {"text": data.get("text"), "comment": comment}
    if kind == "rating":
        labels = data.getlist("labels") if hasattr(data, "getlist") else data.get("labels", [])
        return {"score": data.get("score"), "labels": labels, "correction": data.get("correction"), "comment": comment}
    if kind == "pairwise":
        preference = _PREFERENCE_BY_VALUE.get(data.get("preference"))
        if preference is None:
            raise ValidationError({"preference": "Choose which response is better, or tie."})
        both_bad = data.get("both_bad") in ("on", "true", "1", True)
        side = _swap(preference.side) if swapped else preference.side
        return {"choice": side, "strength": preference.strength, "both_bad": both_bad, "comment": comment}
    json_ranks = data.get("ranks")
    if isinstance(json_ranks, Mapping):
        given = {response_id: json_ranks.get(str(response_id), "") for response_id in shown_order}
    else:
        given = {response_id: data.get(f"rank-{response_id}", "") for response_id in shown_order}
    ranks: dict[int, int] = {}
    for response_id in shown_order:
        value = str(given[response_id]).strip()
        # isdecimal, not isdigit: "²" is a digit that int() refuses.
        if not value.isdecimal() or not 1 <= int(value) <= len(shown_order):
            raise ValidationError({f"rank-{response_id}": f"Give every response a rank from 1 to {len(shown_order)}."})
        ranks[response_id] = int(value)
    groups: dict[int, list[int]] = {}
    for response_id, rank in ranks.items():
        groups.setdefault(rank, []).append(response_id)
    return {"ranking": [groups[rank] for rank in sorted(groups)], "comment": comment}


def form_from_answer(fields: Mapping[str, Any], *, kind: str, swapped: bool) -> QueryDict:
    """The task page's form fields (in displayed terms) for a stored answer: answer_from_shown's inverse."""
    data = QueryDict(mutable=True)
    data["comment"] = fields.get("comment", "")
    if kind == "write":
        data["text"] = fields["text"]
    elif kind == "rating":
        data["score"] = str(fields["score"])
        data.setlist("labels", fields.get("labels", []))
        data["correction"] = fields.get("correction") or ""
    elif kind == "pairwise":
        side, strength = fields["choice"], fields.get("strength")
        side = _swap(side) if swapped else side
        data["preference"] = next(p.value for p in PREFERENCES if (p.side, p.strength) == (side, strength))
        if fields.get("both_bad"):
            data["both_bad"] = "on"
    else:
        for rank, group in enumerate(fields["ranking"], start=1):
            for response_id in group:
                data[f"rank-{response_id}"] = str(rank)
    return data


def _swap(side: str) -> str:
    """The other displayed side; a tie stays a tie."""
    return {"a": "b", "b": "a"}.get(side, side)


def clean_answer(project: "Project", kind: str, response_ids: list[int], data: Mapping[str, Any]) -> dict[str, Any]:
    """Check `data` for a task of `kind` over `response_ids`; return the Annotation fields it sets."""
    if not isinstance(data, Mapping):
        raise ValidationError({"answer": "Give the answer as an object."})
    allowed = {"rating": RATING_FIELDS, "pairwise": PAIRWISE_FIELDS, "ranking": RANKING_FIELDS, "write": WRITE_FIELDS}
    allowed = allowed.get(kind)
    if allowed is None:
        raise ValidationError({"kind": f"Unknown task kind {kind!r}."})
    if unknown := sorted(set(data) - allowed):
        raise ValidationError({unknown[0]: f"Not a field of a {kind} answer (expected {', '.join(sorted(allowed))})."})
    comment = data.get("comment") or ""
    if not isinstance(comment, str):
        raise ValidationError({"comment": "Must be text."})
    if "\x00" in comment:  # PostgreSQL cannot store it
        raise ValidationError({"comment": "Must not contain a NUL character."})
    if kind == "write":
        return {"comment": comment, WRITTEN: _clean_text(data.get("text"), "text")}
    if kind == "rating":
        fields = {"comment": comment, **_clean_rating(project, data)}
        if correction := _clean_correction(response_ids, data.get("correction")):
            fields[WRITTEN] = correction
        return fields
    if kind == "pairwise":
        return {"comment": comment, **_clean_pairwise(data)}
    return {"comment": comment, "ranking": _clean_ranking(response_ids, data.get("ranking"))}


def _clean_text(text: Any, name: str) -> str:
    """A written answer: text that is not blank, within the import's limit on one text; line ends as "\n"."""
    if text is None or (isinstance(text, str) and not text.strip()):
        raise ValidationError({name: "Write the answer: it is empty."})
    if not isinstance(text, str):
        raise ValidationError({name: "Must be text."})
    if "\x00" in text:  # PostgreSQL cannot store it
        raise ValidationError({name: "Must not contain a NUL character."})
    # A browser sends a textarea's line breaks as CRLF; the same answer from the API has LF.
    text = text.replace("\r\n", "\n")
    limit = settings.ARBITER_IMPORT_MAX_FIELD_BYTES
    if (size := len(text.encode())) > limit:
        raise ValidationError(
            {name: f"Is {size:,} bytes, over the limit of {limit:,} (ARBITER_IMPORT_MAX_FIELD_BYTES)."}
        )
    return text


def _clean_correction(response_ids: list[int], correction: Any) -> str | None:
    """A rating's "better answer": None when none is given (blank counts as none), else its text, which must differ
    from the rated response's (text_key: a correction that changes only whitespace corrects nothing)."""
    if correction is None or (isinstance(correction, str) and not correction.strip()):
        return None
    text = _clean_text(correction, "correction")
    from annotate.models import Response, text_key

    rated = Response.objects.filter(pk__in=response_ids).values_list("content", flat=True).first()
    if rated is not None and text_key(rated) == text_key(text):
        raise ValidationError(
            {"correction": "The better answer is the response as it is: change it, or leave it empty."}
        )
    return text


def _clean_rating(project: "Project", data: Mapping[str, Any]) -> dict[str, Any]:
    score = data.get("score")
    if score is None or score == "":
        raise ValidationError({"score": f"Choose a score from {project.rating_min} to {project.rating_max}."})
    # isdecimal, not isdigit: "²" is a digit that int() refuses.
    if isinstance(score, str) and score.strip().removeprefix("-").isdecimal():
        score = int(score)
    if isinstance(score, bool) or not isinstance(score, int):
        raise ValidationError({"score": f"Must be a whole number, not {score!r}."})
    if not project.rating_min <= score <= project.rating_max:
        raise ValidationError({"score": f"{score} is outside the scale {project.rating_min}–{project.rating_max}."})
    labels = data.get("labels") or []
    if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
        raise ValidationError({"labels": "Must be a list of label names."})
    if unknown := sorted(set(labels) - set(project.labels)):
        raise ValidationError({"labels": f"Not in the project's label set: {', '.join(unknown)}."})
    # Keep the project's order so equal answers store equal values.
    return {"score": score, "labels": [label for label in project.labels if label in labels]}


def _clean_pairwise(data: Mapping[str, Any]) -> dict[str, Any]:
    choice = data.get("choice")
    if choice not in {"a", "b", "tie"}:
        raise ValidationError({"choice": f"Must be 'a', 'b' or 'tie', not {choice!r}."})
    strength = data.get("strength")
    if isinstance(strength, str) and strength.isdecimal():
        strength = int(strength)
    if choice == "tie":
        if strength not in (None, "", 0):
            raise ValidationError({"strength": "A tie has no strength."})
        strength = None
    elif strength in (None, ""):
        strength = 1
    elif isinstance(strength, bool) or strength not in (1, 2):
        raise ValidationError({"strength": f"Must be 1 (better) or 2 (much better), not {strength!r}."})
    both_bad = data.get("both_bad", False)
    if both_bad in ("true", "on", "1"):
        both_bad = True
    elif both_bad in ("false", "", "0", None):
        both_bad = False
    if not isinstance(both_bad, bool):
        raise ValidationError({"both_bad": f"Must be true or false, not {both_bad!r}."})
    return {"choice": choice, "strength": strength, "both_bad": both_bad}


def _clean_ranking(response_ids: list[int], ranking: Any) -> list[list[int]]:
    """Accept [id, [id, id], …] (best first; a nested list is a tie) and return a list of groups."""
    if not isinstance(ranking, list) or not ranking:
        raise ValidationError({"ranking": "Give the responses in order, best first."})
    groups: list[list[int]] = []
    for item in ranking:
        group = item if isinstance(item, list) else [item]
        if not group or not all(isinstance(x, int) and not isinstance(x, bool) for x in group):
            raise ValidationError({"ranking": f"{item!r} is not a response id or a list of tied ids."})
        groups.append(sorted(group))
    ranked = [response_id for group in groups for response_id in group]
    if len(ranked) != len(set(ranked)):
        raise ValidationError({"ranking": "A response appears more than once."})
    if set(ranked) != set(response_ids):
        missing = sorted(set(response_ids) - set(ranked))
        extra = sorted(set(ranked) - set(response_ids))
        problem = f"missing {missing}" if missing else f"not in this task: {extra}"
        raise ValidationError({"ranking": f"Rank every response of the task exactly once ({problem})."})
    return groups
