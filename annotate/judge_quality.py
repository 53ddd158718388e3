"""How far a judge agrees with people (calibration), per judge and per task kind.

An item is what the judge and people can agree on, as annotate/agreement.py has it, but against the human majority:

- pairwise task: the task; the judge's side (a, b or tie; strength and both-bad aside) against the side its human
  votes decide (annotate/votes.py: the sign of their sum);
- ranking task: each two of its responses, a and b in the task's position order; the side the judge's ranking takes
  on them against the side the people's rankings decide;
- rating task: the task; the judge's score against the score people agree on (their median; a task whose median
  falls between two points has no majority and is left out).

The human votes are the project's human annotations, excluded members' aside, as exports read them; a judge's own
votes never make the majority it is measured against. Per judge and per kind (and for all kinds together):

- `agreement`: the share of items where the judge's value is the majority's, with its 95 % Wilson interval. This is
  `measured_agreement`, by which exports weigh the judge's votes.
- `kappa`: Cohen's κ between the judge and the majority, (p_o − p_e) / (1 − p_e), p_e from how often each gives each
  value; 95 % interval ±1.96 standard errors, the large-sample variance of Fleiss, Cohen & Everitt (1969). None where
  p_e is 1 (both always give one and the same value: nothing to correct for); no interval where one of them gives one
  value only (κ is then 0, whatever the other gives). For all kinds together a value is (kind, value): a side and a
  score are never the same answer.
- `consistency`: of the judge's pairwise and ranking answers with a position consistency (asked twice with the
  order swapped: annotate/llm_judge.py), the share where both orders agreed; every answer counts, compared or not.
  A reward model reads each response alone: always consistent.
- `gold`: the judge's answers to gold tasks against their known answer, right as annotate/quality.py's gold accuracy
  has it. Runs never give a judge gold tasks (annotate/judges.tasks_for), so these are its ordinary answers to tasks
  made gold later; every one counts, before or after the known answer, since the known answer is the human majority
  (Task.majority_answer reads no judge's vote) and so never the judge's own.
- `reliability`: the compared items in RELIABILITY_BINS bins of the judge's confidence, each with its mean confidence
  and its agreement (with interval): a calibrated judge's agreement is its confidence. `calibration_error` is the
  expected calibration error, Σ_bins (n_bin / n) · |agreement_bin − confidence_bin|. Items without a confidence are
  left out of both.
"""

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from annotate.models import JUDGED_KINDS, Annotation, Judge, Project, Task, TaskResponse
from annotate.quality import gold_right, share
from annotate.votes import agreed_score, decide, pairwise_vote, ranking_votes, tally, tally_rankings

RELIABILITY_BINS = 10  # equal widths over confidence 0–1
CHUNK_TASKS = 5000  # judged tasks read per round of queries
Z_95 = 1.959963984540054


@dataclass
class Compared:
    """The items a judge and the human majority both answered, one entry each, kind by kind."""

    kind: list[str] = field(default_factory=list)
    judge: list[Any] = field(default_factory=list)  # the judge's value: a side, or a score
    majority: list[Any] = field(default_factory=list)  # the majority's
    confidence: list[float | None] = field(default_factory=list)  # the judge's, on the task the item is part of

    def add(self, kind: str, judge: Any, majority: Any, confidence: float | None) -> None:
        self.kind.append(kind)
        self.judge.append(judge)
        self.majority.append(majority)
        self.confidence.append(confidence)


def compared_items(judge: Judge) -> Compared:
    """Every item the judge answered and people decided (see the module's docstring)."""
    compared = Compared()
    judged = Annotation.objects.filter(annotator=judge.user, task__kind__in=JUDGED_KINDS).order_by("task_id")
    fields = ("task_id", "task__kind", "choice", "strength", "both_bad", "score", "ranking", "confidence")
    rows = list(judged.values_list(*fields))
    excluded = judge.project.excluded_voters()
    for start in range(0, len(rows), CHUNK_TASKS):
        chunk = {row[0]: row for row in rows[start : start + CHUNK_TASKS]}
        people: dict[int, list[tuple]] = defaultdict(list)
        for task_id, *answer in (
            Annotation.objects.filter(task__in=list(chunk), source=Annotation.Source.HUMAN)
            .exclude(annotator__in=excluded)
            .values_list("task_id", "choice", "strength", "both_bad", "score", "ranking")
        ):
            people[task_id].append(answer)
        orders = _response_orders([task_id for task_id, row in chunk.items() if row[1] == "ranking"])
        for task_id, kind, choice, strength, both_bad, score, ranking, confidence in chunk.values():
            answers = people.get(task_id)
            if not answers:
                continue
            if kind == "pairwise":
                votes = tally(pairwise_vote(c, s, b) for c, s, b, _, _ in answers)
                compared.add(kind, pairwise_vote(choice, strength, both_bad).side, decide(votes).winner, confidence)
            elif kind == "rating":
                if (agreed := agreed_score([answer[3] for answer in answers])) is not None:
                    compared.add(kind, score, agreed, confidence)
            else:
                order = orders[task_id]
                mine = ranking_votes(ranking, order)
                for pair, votes in tally_rankings([answer[4] for answer in answers], order).items():
                    compared.add(kind, mine[pair].side, decide(votes).winner, confidence)
    return compared


def _response_orders(task_ids: list[int]) -> dict[int, list[int]]:
    """Each task's response ids in position order."""
    orders: dict[int, list[int]] = defaultdict(list)
    rows = TaskResponse.objects.filter(task__in=task_ids).order_by("task_id", "position")
    for task_id, response_id in rows.values_list("task_id", "response_id"):
        orders[task_id].append(response_id)
    return orders


def measured_agreement(judge: Judge) -> float | None:
    """The share of items answered by people and by the judge where the judge's answer is the human majority's
    (see the module's docstring); None before any such item."""
    compared = compared_items(judge)
    if not compared.kind:
        return None
    return sum(j == m for j, m in zip(compared.judge, compared.majority, strict=True)) / len(compared.kind)


# κ ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Kappa:
    kappa: float | None
    low: float | None
    high: float | None
    n: int


def cohens_kappa(first: Sequence[Any], second: Sequence[Any]) -> Kappa:
    """Cohen's κ between two raters' values on the same items, with its 95 % interval from the large-sample standard
    error of Fleiss, Cohen & Everitt (1969)."""
    n = len(first)
    values = sorted(set(first) | set(second), key=str)
    if n == 0:
        return Kappa(None, None, None, 0)
    index = {value: i for i, value in enumerate(values)}
    table = np.zeros((len(values), len(values)))
    np.add.at(table, ([index[v] for v in first], [index[v] for v in second]), 1)
    p = table / n  # (k, k): p[i, j] the share of items the first rater gave i and the second j
    rows, cols = p.sum(axis=1), p.sum(axis=0)
    observed, chance = np.trace(p), rows @ cols
    if chance >= 1 - 1e-12:
        return Kappa(None, None, None, n)
    kappa = (observed - chance) / (1 - chance)
    if min(np.count_nonzero(rows), np.count_nonzero(cols)) == 1:
        # One rater gives one value only: κ is 0 whatever the other does, and the variance formula says 0 too.
        return Kappa(float(kappa), None, None, n)
    # var κ = [Σ_i p_ii (1 − (r_i + c_i)(1 − κ))² + (1 − κ)² Σ_{i≠j} p_ij (c_i + r_j)² − (κ − p_e(1 − κ))²]
    #         / (n (1 − p_e)²)
    diagonal = np.diag(p) * (1 - (rows + cols) * (1 - kappa)) ** 2
    off = p * (cols[:, None] + rows[None, :]) ** 2
    np.fill_diagonal(off, 0)
    variance = (diagonal.sum() + (1 - kappa) ** 2 * off.sum() - (kappa - chance * (1 - kappa)) ** 2) / (
        n * (1 - chance) ** 2
    )
    half = Z_95 * math.sqrt(max(variance, 0.0))
    return Kappa(float(kappa), float(max(kappa - half, -1.0)), float(min(kappa + half, 1.0)), n)


# Figures ------------------------------------------------------------------------------------------


def _agreement_figures(kind: str | None, compared: Compared) -> dict[str, Any]:
    rows = [i for i, k in enumerate(compared.kind) if kind is None or k == kind]
    judge = [compared.judge[i] for i in rows]
    majority = [compared.majority[i] for i in rows]
    agreed = share(sum(j == m for j, m in zip(judge, majority, strict=True)), len(rows))
    # Across kinds a side and a score are different values: κ over (kind, value).
    if kind is None:
        judge = [(compared.kind[i], v) for i, v in zip(rows, judge, strict=True)]
        majority = [(compared.kind[i], v) for i, v in zip(rows, majority, strict=True)]
    kappa = cohens_kappa(judge, majority)
    return {
        "compared": agreed.n,
        "agreed": agreed.hits,
        "agreement": agreed.share,
        "agreement_low": agreed.low,
        "agreement_high": agreed.high,
        "kappa": kappa.kappa,
        "kappa_low": kappa.low,
        "kappa_high": kappa.high,
    }


def _counted_share(prefix: str, hits: int, n: int) -> dict[str, Any]:
    measured = share(hits, n)
    return {f"{prefix}_answers": n, f"{prefix}_right": hits} | {
        prefix: measured.share,
        f"{prefix}_low": measured.low,
        f"{prefix}_high": measured.high,
    }


def reliability(compared: Compared) -> list[dict[str, Any]]:
    """The compared items with a confidence, by bin of confidence: its bounds, items, mean confidence and agreement
    with its interval; bins without items left out."""
    bins: dict[int, list[tuple[float, bool]]] = defaultdict(list)
    for confidence, j, m in zip(compared.confidence, compared.judge, compared.majority, strict=True):
        if confidence is not None:
            bins[min(int(confidence * RELIABILITY_BINS), RELIABILITY_BINS - 1)].append((confidence, j == m))
    rows = []
    for b, items in sorted(bins.items()):
        agreed = share(sum(hit for _, hit in items), len(items))
        rows.append(
            {
                "low": b / RELIABILITY_BINS,
                "high": (b + 1) / RELIABILITY_BINS,
                "items": len(items),
                "confidence": sum(c for c, _ in items) / len(items),
                "agreement": agreed.share,
                "agreement_low": agreed.low,
                "agreement_high": agreed.high,
            }
        )
    return rows


def calibration_error(bins: Iterable[dict[str, Any]]) -> float | None:
    """The expected calibration error of reliability bins: Σ (n_bin / n) · |agreement − confidence|."""
    bins = list(bins)
    n = sum(row["items"] for row in bins)
    if not n:
        return None
    return sum(row["items"] * abs(row["agreement"] - row["confidence"]) for row in bins) / n


def judge_figures(judge: Judge) -> dict[str, Any]:
    """A judge's figures (see the module's docstring): for all kinds and per kind, and its reliability diagram."""
    answers = Counter(Annotation.objects.filter(annotator=judge.user).values_list("task__kind", flat=True))
    consistency: dict[str, Counter] = defaultdict(Counter)
    rows = Annotation.objects.filter(annotator=judge.user, consistent__isnull=False).values_list(
        "task__kind", "consistent"
    )
    for kind, consistent in rows:
        consistency[kind][consistent] += 1
    return _figures(judge, compared_items(judge), answers, consistency, _gold_right(judge))


def no_figures(judge: Judge) -> dict[str, Any]:
    """The figures of a judge that had answered nothing when they were computed."""
    return _figures(judge, Compared(), Counter(), defaultdict(Counter), defaultdict(Counter))


def _figures(
    judge: Judge,
    compared: Compared,
    answers: Counter,
    consistency: dict[str, Counter],
    gold: dict[str, Counter],
) -> dict[str, Any]:
    kinds = [str(kind) for kind in JUDGED_KINDS if answers[kind]]

    def figures(kind: str | None) -> dict[str, Any]:
        of = [kind] if kind else kinds
        counts = [consistency[k] for k in of]
        return {
            "kind": kind or "all",
            "answers": sum(answers[k] for k in of),
            **_agreement_figures(kind, compared),
            **_counted_share("consistency", sum(c[True] for c in counts), sum(c.total() for c in counts)),
            **_counted_share("gold", sum(gold[k][True] for k in of), sum(gold[k].total() for k in of)),
        }

    bins = reliability(compared)
    return {
        "id": judge.pk,
        "name": judge.name,
        "judge_kind": judge.kind,
        "username": judge.user.get_username(),
        **figures(None),
        "kinds": [figures(kind) for kind in kinds],
        "reliability": bins,
        "calibration_error": calibration_error(bins),
    }


def _gold_right(judge: Judge) -> dict[str, Counter]:
    """Per kind, how many of the judge's answers to gold tasks are right (True) and wrong (False)."""
    fields = ("choice", "strength", "both_bad", "score", "ranking")
    gold_tasks = Task.objects.filter(project=judge.project_id, status=Task.Status.GOLD)
    known = {
        task_id: answer
        for task_id, *answer in Annotation.objects.filter(task__in=gold_tasks, source=Annotation.Source.GOLD)
        .order_by("id")
        .values_list("task_id", *fields)
    }
    right: dict[str, Counter] = defaultdict(Counter)
    for task_id, kind, *answer in Annotation.objects.filter(annotator=judge.user, task__in=gold_tasks).values_list(
        "task_id", "task__kind", *fields
    ):
        if task_id in known:
            right[kind][gold_right(kind, answer, known[task_id])] += 1
    return right


def judges_figures(project: Project) -> list[dict[str, Any]]:
    """Every judge of the project with its figures, by name."""
    return [judge_figures(judge) for judge in project.judges.select_related("user").order_by("name")]
