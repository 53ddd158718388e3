"""Dawid–Skene aggregation of pair votes, for exports that take `aggregation = dawid-skene`.

Majority voting (annotate/votes.py) counts every vote the same; Dawid–Skene weighs each by how reliable its voter is.
`fit_sides` reads every vote that counts in the project (annotate/votes.py's votes on pairs, from human and imported
answers, or judges' where the export takes them: not automatic ties, not gold tasks, not members whose votes are
excluded) and fits Dawid–Skene
(annotate/quality.py's EM) to their sides, each pair of a task an item with a true side a, b or tie, each annotator a
worker with a confusion matrix of their own (imported answers together one worker). The fit keeps what a decision
needs, the prior of each side and every voter's confusion matrix, not the items: a pair's posterior is then
recomputed from its votes as an export reads them,

    P(truth k | the pair's votes) ∝ π_k · Π over its votes e_w[k, l]   (the EM's E step for one item)

which is the fit's own posterior for a pair whose votes the export takes whole, and the right one for a pair whose
votes a filter narrows (since / until, annotator): what the pair's remaining votes say, weighed by how reliable their
voters proved over the whole project. A voter the fit did not see (an answer given while the export ran) counts with
the voters' mean confusion matrix. Memory: the fit reads the votes into numpy columns, CHUNK_TASKS tasks at a time
(24 bytes a vote), and keeps some 72 bytes a voter.
"""

import math
from array import array
from dataclasses import dataclass

import numpy as np
import orjson
from django.db.models import TextField
from django.db.models.functions import Cast

from annotate.models import Annotation, Project, Task, TaskKind, TaskResponse
from annotate.quality import CHUNK_TASKS, PAIR_LABELS, dawid_skene
from annotate.votes import Decision, Tally, decide_by_posterior, pairwise_vote, ranking_votes

SIDES = 3  # the labels of a pair: a 0, b 1, tie 2 (PAIR_LABELS, by the sign of a vote)


@dataclass(frozen=True)
class SideModel:
    """A fitted Dawid–Skene model of pair sides, kept as what the E step for one pair reads."""

    voters: dict[int | None, int]  # user id (None: imported answers) → their row of `columns`
    log_prior: tuple[float, float, float]  # log π_k, k = a, b, tie
    # [voter][l] = (log e[a, l], log e[b, l], log e[tie, l]): what a vote l by that voter adds to each true side's
    # log-probability. The last row is the voters' mean, for a voter the fit did not see.
    columns: list[list[tuple[float, float, float]]]
    iterations: int

    def posterior(self, votes: list[tuple[int | None, int]]) -> tuple[float, float, float]:
        """P(true side a, b, tie) given a pair's votes, each (voter's user id, Vote.value)."""
        # Plain floats: an export asks this of every pair, and numpy's per-call cost is ten times the arithmetic.
        la, lb, lt = self.log_prior
        unseen = len(self.columns) - 1
        for voter, value in votes:
            x, y, z = self.columns[self.voters.get(voter, unseen)][_LABEL[(value > 0) - (value < 0)]]
            la, lb, lt = la + x, lb + y, lt + z
        top = max(la, lb, lt)
        pa, pb, pt = math.exp(la - top), math.exp(lb - top), math.exp(lt - top)
        total = pa + pb + pt
        return pa / total, pb / total, pt / total

    def decide(self, tally: Tally, votes: list[tuple[int | None, int]]) -> Decision:
        """The pair's decision (annotate/votes.py) from its tally and its votes, each (voter, Vote.value)."""
        return decide_by_posterior(tally, *self.posterior(votes))


_LABEL = {1: int(PAIR_LABELS[2]), -1: int(PAIR_LABELS[0]), 0: int(PAIR_LABELS[1])}  # a vote's sign → its label


def fit_sides(project: Project, *, votes: str = "human") -> SideModel:
    """Fit Dawid–Skene to every vote on a pair that counts in the project: people's and imported ones (votes
    "human"), judges' ("judge"), or all of them ("both": each judge a voter whose reliability the fit measures)."""
    sources = {
        "human": [Annotation.Source.HUMAN, Annotation.Source.IMPORTED],
        "judge": [Annotation.Source.JUDGE],
        "both": [Annotation.Source.HUMAN, Annotation.Source.IMPORTED, Annotation.Source.JUDGE],
    }[votes]
    excluded = set(project.excluded_voters().values_list("user_id", flat=True))
    voters: dict[int | None, int] = {}
    items, workers, labels = array("q"), array("q"), array("q")
    n_items, after = 0, 0
    kinds = [TaskKind.PAIRWISE, TaskKind.RANKING]
    while tasks := dict(
        Task.objects.filter(project=project, kind__in=kinds, pk__gt=after)
        .exclude(status=Task.Status.GOLD)
        .order_by("pk")
        .values_list("pk", "kind")[:CHUNK_TASKS]
    ):
        # Id ranges (index range scans), other projects' and kinds' rows left out here, as quality.read_answers reads.
        first, last = next(iter(tasks)), next(reversed(tasks))
        order: dict[int, list[int]] = {}  # a ranking task's response ids by position
        if TaskKind.RANKING in tasks.values():
            for task_id, response_id in (
                TaskResponse.objects.filter(task__gte=first, task__lte=last)
                .order_by("task_id", "position")
                .values_list("task_id", "response_id")
            ):
                if tasks.get(task_id) == TaskKind.RANKING:
                    order.setdefault(task_id, []).append(response_id)
        first_item: dict[int, int] = {}  # a task's first item; a ranking's pairs follow in combinations' order
        for task_id, voter, choice, strength, both_bad, ranking in (
            Annotation.objects.filter(task__gte=first, task__lte=last, source__in=sources)
            .order_by("task_id", "id")
            .values_list("task_id", "annotator_id", "choice", "strength", "both_bad", Cast("ranking", TextField()))
        ):
            if task_id not in tasks or voter in excluded:
                continue
            if task_id not in first_item:
                first_item[task_id] = n_items
                n = len(order.get(task_id, ())) if tasks[task_id] == TaskKind.RANKING else 2
                n_items += n * (n - 1) // 2
            if tasks[task_id] == TaskKind.PAIRWISE:
                values = [pairwise_vote(choice, strength, both_bad).value]
            else:
                values = [vote.value for vote in ranking_votes(orjson.loads(ranking), order[task_id]).values()]
            worker = voters.setdefault(voter, len(voters))
            for offset, value in enumerate(values):
                items.append(first_item[task_id] + offset)
                workers.append(worker)
                labels.append(_LABEL[(value > 0) - (value < 0)])
        after = last
    if not items:
        uniform = math.log(1 / SIDES)
        return SideModel({}, (uniform,) * SIDES, [[(uniform,) * SIDES] * SIDES], 0)
    fit = dawid_skene(*(np.frombuffer(column, dtype=np.int64) for column in (items, workers, labels)), SIDES)
    confusion = np.concatenate([fit.confusion, fit.confusion.mean(axis=0, keepdims=True)])  # (W + 1, K, K)
    log_confusion = np.log(confusion).transpose(0, 2, 1)  # [w, l, k]
    log_prior = np.log(np.maximum(fit.prior, 1e-300))
    return SideModel(
        voters,
        (float(log_prior[0]), float(log_prior[1]), float(log_prior[2])),
        [[(float(x), float(y), float(z)) for x, y, z in voter] for voter in log_confusion],
        fit.iterations,
    )
