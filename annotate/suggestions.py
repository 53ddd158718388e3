"""How far the judge's suggestions anchor people (Project.show_judge_suggestions).

A suggestion is offered on a lease when the project's judge had answered the task (Project._shows_suggestion); a
random share of those leases, the control group (Project.suggestion_control_share), is shown nothing. On the answers
given on offered leases, `following` compares how often people's answer is the judge's when they saw it against how
often it is when they did not: agreement in the control group is what they would reach unprompted (the judge is
often right), so only the difference is the anchoring.

- The same answer: pairwise, the same side (a, b or tie; strength and "both bad" aside); a rating, the same score
  (labels aside); a ranking, the same groups in the same order.
- Each share with its 95 % Wilson interval (annotate/quality.py), the difference (shown − control) with Newcombe's
  hybrid score interval (Newcombe 1998, method 10), built from the two Wilson intervals.
- Against the project's judge now: a lease records that a suggestion was shown, not whose; after a change of judge,
  answers given under the former judge are compared with the new one's where it answered too.

Read live on the Quality page and in its API: the query starts from the offered leases (a partial index holds only
those), so a project that never showed suggestions costs one index probe.
"""

import math
from typing import Any

from annotate.models import Annotation, Assignment, Project, TaskKind
from annotate.quality import Share, share
from annotate.votes import pairwise_vote


def same_answer(kind: str, person: dict[str, Any], judge: dict[str, Any]) -> bool:
    """Whether a person's answer is the judge's (see the module's docstring)."""
    if kind == TaskKind.PAIRWISE:
        side = [pairwise_vote(row["choice"], row["strength"], row["both_bad"]).side for row in (person, judge)]
        return side[0] == side[1]
    if kind == TaskKind.RATING:
        return person["score"] == judge["score"]
    groups = [[sorted(group) for group in row["ranking"] or []] for row in (person, judge)]
    return groups[0] == groups[1]


def difference_interval(shown: Share, control: Share) -> tuple[float | None, float | None]:
    """Newcombe's 95 % interval of shown.share − control.share; None for either bound without answers in both."""
    if shown.share is None or control.share is None:
        return None, None
    d = shown.share - control.share
    low = d - math.hypot(shown.share - shown.low, control.high - control.share)
    high = d + math.hypot(shown.high - shown.share, control.share - control.low)
    return max(low, -1.0), min(high, 1.0)


def following(project: Project) -> dict[str, Any] | None:
    """How often people's answers equal the judge's, shown the suggestion and not; None without a project judge."""
    if project.judge_id is None:
        return None
    fields = ("choice", "strength", "both_bad", "score", "ranking")
    answered = (
        Assignment.objects.filter(
            suggestion_shown__isnull=False, task__project=project, annotation__source=Annotation.Source.HUMAN
        )
        .order_by()
        .values("task_id", "task__kind", "suggestion_shown", *(f"annotation__{name}" for name in fields))
    )
    rows = list(answered)
    verdicts = Annotation.objects.filter(annotator__judge=project.judge_id)
    judged = {row["task_id"]: row for row in verdicts.values("task_id", *fields)} if rows else {}
    counts = {True: [0, 0], False: [0, 0]}  # shown?: [same as the judge, answers]
    for row in rows:
        if (judge := judged.get(row["task_id"])) is None:
            continue
        person = {name: row[f"annotation__{name}"] for name in fields}
        tally = counts[row["suggestion_shown"]]
        tally[0] += same_answer(row["task__kind"], person, judge)
        tally[1] += 1
    shown, control = share(*counts[True]), share(*counts[False])
    low, high = difference_interval(shown, control)
    return {
        "judge": project.judge.name,
        "shown_answers": shown.n,
        "shown_same": shown.hits,
        "shown_share": shown.share,
        "shown_low": shown.low,
        "shown_high": shown.high,
        "control_answers": control.n,
        "control_same": control.hits,
        "control_share": control.share,
        "control_low": control.low,
        "control_high": control.high,
        "difference": None if low is None else shown.share - control.share,
        "difference_low": low,
        "difference_high": high,
    }
