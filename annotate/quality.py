"""How each annotator answers, measured without gold: position bias, length bias, speed and reliability.

Read once, measure many: `read_answers` reads a project's human annotations a chunk of tasks at a time into
`Answers`, numpy columns of what the measures need (under a hundred bytes an annotation), and each measure is a
plain function of Answers, per annotator and for the whole project. `annotator_quality` reads and runs them all; it
is meant for a periodic job whose result the Quality page shows: some 15 s of one CPU at a million annotations
(BENCHMARKS.md). Votes on pairs are read by the vote model (annotate/votes.py), as exports read them.

- Position bias, pairwise: of an annotator's choices that are not ties, the share for the response shown first
  (Assignment.shown_order[0], the displayed A), with a 95 % Wilson interval and a two-sided exact binomial test
  against 1/2. Answers without a recorded order are left out.
- Position bias, rankings: how often the response shown first is in the top group. By chance that happens with
  probability (responses in the top group) / (responses): 1/n without ties; `chance` is its mean over the rankings,
  and the test is against that mean (exact when every ranking has the same n and a top group of the same size).
- Length bias: of an annotator's votes on pairs (a pairwise answer, or each pair a ranking orders) that are not
  ties and whose two responses differ in length (characters), the share won by the longer, with interval and test
  against 1/2. A ranking's pairs count as separate votes, as for win rates, which makes its interval a little narrow.
- Speed: the median of Annotation.time_spent and the share of answers faster than `fast_seconds`. The server
  measures the time (Assignment.submit: from the lease, or the annotator's previous submit or skip in the project if
  later, to the submit, at most the project's lease length); nothing a client sends sets it. Answers without a time
  are left out.
- Competence: how well an annotator's answers track the answer everyone's votes point to, by Dawid–Skene (below):
  a chance-corrected agreement with the estimated true label, 1 always right, 0 no better than answering at random
  (or always the same), below 0 worse. Fitted separately to pairwise sides (every pair of a task an item, its labels
  a, b or tie; rankings give one label per pair they order) and to rating scores (each rating task an item, each
  point of a scale of up to MAX_RATING_POINTS a label); an annotator's competence is the mean of the two weighted
  by their answers in each. `compared_answers` counts what it rests on: answers to items someone else answered too.
- Gold accuracy: answers to gold tasks (status gold) against their known answer; see `gold_accuracy`.

Dawid & Skene (1979): every item has an unknown true label; each annotator answers l when the truth is k with a
probability of their own, their confusion matrix. EM alternates the posterior of each item's label given everyone's
answers (E) and the prior and confusion matrices given those posteriors (M), from the share of votes per label
(the majority vote) until a step raises the log-likelihood by less than 1e-6 an answer. A hand-written EM (some 40
lines of numpy) rather than crowd-kit's, which would have served (Toloka's, Apache-2.0, kept): crowd-kit requires
scikit-learn, scipy, nltk and transformers, some 200 MB the web app does not otherwise need (transformers only comes
with the train extra), and works on pandas frames: at 100,000 annotations it took 1.8 s for the 39 EM steps this
takes in 0.23 s (13 s and 2.6 s at a million), and given crowd-kit's floor in place of the smoothing below, both
give the same posteriors, 5e-11 apart (BENCHMARKS.md).
"""

import math
from array import array
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np
import orjson
from django.contrib.auth import get_user_model
from django.db.models import TextField
from django.db.models.functions import Cast, Length

from annotate.models import JUDGED_KINDS, Annotation, Assignment, Membership, Project, Task, TaskKind, TaskResponse
from annotate.votes import pairwise_vote, ranking_votes
from models_registry.measures import wilson_interval

CHUNK_TASKS = 5000  # tasks read per round of queries
KINDS = {TaskKind.RATING: 0, TaskKind.PAIRWISE: 1, TaskKind.RANKING: 2}  # Answers.kind
# A pair's Dawid–Skene label (0 a, 1 b, 2 tie) by the sign of its vote + 1: b, tie, a.
PAIR_LABELS = np.array([1, 2, 0])
MAX_RATING_POINTS = 11  # wider scales are not fitted: a confusion matrix of 11 × 11 per annotator is data-hungry enough

T = TypeVar("T")


@dataclass(frozen=True, eq=False)  # numpy columns: == would compare element by element
class Answers:
    """A project's human answers as the measures read them: numpy columns, one row per annotation, vote or rating."""

    usernames: list[str]  # an annotator's index in the columns below → their username
    # Every annotation:
    annotator: np.ndarray  # (N,) int
    kind: np.ndarray  # (N,) int, KINDS
    seconds: np.ndarray  # (N,) float: time_spent, NaN where it was not measured
    first: np.ndarray  # (N,) int: 1 the first-shown response won (pairwise) or is in the top group (ranking), 0 not,
    # -1 neither (a tie, a rating, no shown order)
    chance: np.ndarray  # (N,) float: the probability of first = 1 by chance
    # Every vote on a pair (annotate/votes.py):
    vote_annotator: np.ndarray  # (V,) int
    vote_item: np.ndarray  # (V,) int: the pair (a task's two responses), numbered from 0
    vote_value: np.ndarray  # (V,) int: Vote.value, +strength for a, -strength for b, 0 a tie
    vote_longer: np.ndarray  # (V,) int: 1 a is the longer, -1 b, 0 the same length
    # Every rating:
    rating_annotator: np.ndarray  # (R,) int
    rating_item: np.ndarray  # (R,) int: the task, numbered from 0
    rating_point: np.ndarray  # (R,) int: score - rating_min
    rating_points: int  # points on the project's scale


class _Columns:
    """Answers while they are read: growing arrays of machine numbers, not lists of Python objects."""

    def __init__(self, rating_min: int, rating_points: int) -> None:
        self.rating_min, self.rating_points = rating_min, rating_points
        self.annotators: dict[int, int] = {}  # user id → index
        self.annotator, self.kind, self.first = array("q"), array("b"), array("b")
        self.seconds, self.chance = array("d"), array("d")
        self.vote_annotator, self.vote_item, self.vote_value, self.vote_longer = (array("q") for _ in range(4))
        self.items = 0
        self.rating_annotator, self.rating_item, self.rating_point = array("q"), array("q"), array("q")
        self.rating_items = 0

    def add_task(self, kind: str, responses: list[tuple[int, int]], annotations: list[tuple]) -> None:
        """One task's annotations; responses are (id, length) in position order."""
        if kind == TaskKind.RATING:
            item, self.rating_items = self.rating_items, self.rating_items + 1
        elif kind == TaskKind.PAIRWISE:
            item, self.items = self.items, self.items + 1
        else:  # an item per pair of its responses
            item, self.items = self.items, self.items + len(responses) * (len(responses) - 1) // 2
        length = dict(responses)
        for user_id, choice, strength, both_bad, ranking_text, score, time_spent, shown_text in annotations:
            ranking, shown = _json(ranking_text), _json(shown_text)
            annotator = self.annotators.setdefault(user_id, len(self.annotators))
            self.annotator.append(annotator)
            self.kind.append(KINDS[kind])
            self.seconds.append(math.nan if time_spent is None else time_spent.total_seconds())
            first, chance = -1, 0.5
            if kind == TaskKind.RATING:
                self.rating_annotator.append(annotator)
                self.rating_item.append(item)
                self.rating_point.append(score - self.rating_min)
            elif kind == TaskKind.PAIRWISE:
                (a, a_length), (b, b_length) = responses
                vote = pairwise_vote(choice, strength, both_bad)
                self._vote(annotator, item, vote.value, a_length - b_length)
                if shown and vote.value:
                    first = int((vote.value > 0) == (shown[0] == a))
            else:
                for offset, ((a, b), vote) in enumerate(ranking_votes(ranking, list(length)).items()):
                    self._vote(annotator, item + offset, vote.value, length[a] - length[b])
                chance = len(ranking[0]) / len(responses)
                if shown:
                    first = int(shown[0] in ranking[0])
            self.first.append(first)
            self.chance.append(chance)

    def _vote(self, annotator: int, item: int, value: int, length_difference: int) -> None:
        self.vote_annotator.append(annotator)
        self.vote_item.append(item)
        self.vote_value.append(value)
        self.vote_longer.append((length_difference > 0) - (length_difference < 0))

    def answers(self) -> Answers:
        names = get_user_model().objects.in_bulk(list(self.annotators))
        usernames = [names[user_id].get_username() for user_id in self.annotators]

        def column(values: array) -> np.ndarray:
            # A read-only view of the array's memory, not a copy (numpy reads array's type codes).
            return np.frombuffer(values, dtype=values.typecode)

        return Answers(
            usernames,
            *(column(values) for values in (self.annotator, self.kind, self.seconds, self.first, self.chance)),
            *(column(values) for values in (self.vote_annotator, self.vote_item, self.vote_value, self.vote_longer)),
            *(column(values) for values in (self.rating_annotator, self.rating_item, self.rating_point)),
            self.rating_points,
        )


def _json(text: str | None) -> Any:
    return None if text is None else orjson.loads(text)


def read_answers(project: Project) -> Answers:
    """The project's human annotations, read CHUNK_TASKS tasks at a time in id order; its annotators come first,
    those who have not answered yet too. Answers to gold tasks are read like the others: those tasks are served like
    the others, so they show how their annotator works (the known answer itself is no one's, and not read)."""
    columns = _Columns(project.rating_min, project.rating_max - project.rating_min + 1)
    members = project.memberships.filter(role=Membership.Role.ANNOTATOR).order_by("user_id")
    for user_id in members.values_list("user_id", flat=True):
        columns.annotators[user_id] = len(columns.annotators)
    after = 0
    while tasks := dict(
        # A written answer (a write task) compares nothing: no bias, competence or agreement comes of it.
        Task.objects.filter(project=project, kind__in=JUDGED_KINDS, pk__gt=after)
        .order_by("pk")
        .values_list("pk", "kind")[:CHUNK_TASKS]
    ):
        # Each query reads a range of task ids (an index range scan) and leaves other projects' rows out here: joined
        # to the task table for its project, PostgreSQL hashed the whole table for every chunk (BENCHMARKS.md).
        first, last = next(iter(tasks)), next(reversed(tasks))
        responses: dict[int, list[tuple[int, int]]] = {}
        for task_id, response_id, length in (
            TaskResponse.objects.filter(task__gte=first, task__lte=last)
            .order_by("task_id", "position")
            .values_list("task_id", "response_id", Length("response__content"))
        ):
            if task_id in tasks:
                responses.setdefault(task_id, []).append((response_id, length))
        shown_orders = dict(
            Assignment.objects.filter(task__gte=first, task__lte=last)
            .order_by()
            .values_list("pk", Cast("shown_order", TextField()))
        )
        annotations: dict[int, list[tuple]] = {}
        # The JSON columns as text, parsed by orjson: Django's converters took some 40 % of the reading.
        for task_id, assignment_id, *answer in (
            Annotation.objects.filter(task__gte=first, task__lte=last, source=Annotation.Source.HUMAN)
            .order_by("task_id", "id")
            .values_list(
                "task_id",
                "assignment_id",
                "annotator_id",
                "choice",
                "strength",
                "both_bad",
                Cast("ranking", TextField()),
                "score",
                "time_spent",
            )
        ):
            if task_id in tasks:
                annotations.setdefault(task_id, []).append((*answer, shown_orders.get(assignment_id)))
        for task_id, task_annotations in annotations.items():
            columns.add_task(tasks[task_id], responses.get(task_id, []), task_annotations)
        after = last
    return columns.answers()


# Shares -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Share:
    """hits of n: the share, its 95 % Wilson interval, and a two-sided exact binomial test against `chance`."""

    hits: int
    n: int
    chance: float
    share: float | None  # None without answers, as are the three below
    low: float | None
    high: float | None
    p_value: float | None


def share(hits: int, n: int, chance: float = 0.5) -> Share:
    if n == 0:
        return Share(hits, n, chance, None, None, None, None)
    low, high = wilson_interval(hits / n, n)
    return Share(hits, n, chance, hits / n, low, high, binomial_test(hits, n, chance))


def binomial_test(k: int, n: int, p: float = 0.5) -> float:
    """Two-sided exact binomial test: the probability, if each of n trials hits with probability p, of a count of
    hits no more likely than k (as scipy.stats.binomtest)."""
    if p <= 0 or p >= 1:
        return float(k == round(n * p))
    i = np.arange(n + 1)
    # log C(n, i) = Σ_{j ≤ i} log((n − j + 1) / j), summed in numpy rather than n calls of lgamma
    log_choose = np.concatenate([[0.0], np.cumsum(np.log(n - i[1:] + 1) - np.log(i[1:]))])
    log_pmf = log_choose + i * math.log(p) + (n - i) * math.log1p(-p)
    # The outcomes no more likely than k's; the tolerance keeps k's mirror image in under rounding, as scipy does.
    tail = log_pmf[log_pmf <= log_pmf[k] + 1e-7]
    top = tail.max()
    return float(min(1.0, math.exp(top) * np.exp(tail - top).sum()))


@dataclass(frozen=True)
class PerAnnotator(Generic[T]):
    """A measure for the whole project and for each annotator with human answers in it (None where it has none)."""

    project: T
    annotators: dict[str, T]


def _shares(answers: Answers, annotator: np.ndarray, hit: np.ndarray, chance: np.ndarray) -> PerAnnotator[Share]:
    """Shares of hits per annotator (rows: annotator index, hit 0/1, chance of a hit)."""
    k = len(answers.usernames)
    n = np.bincount(annotator, minlength=k)
    hits = np.bincount(annotator, weights=hit, minlength=k)
    chances = np.bincount(annotator, weights=chance, minlength=k)
    return PerAnnotator(
        project=share(int(hit.sum()), len(hit), float(chance.mean()) if len(chance) else 0.5),
        annotators={
            name: share(int(hits[i]), int(n[i]), float(chances[i] / n[i]) if n[i] else 0.5)
            for i, name in enumerate(answers.usernames)
        },
    )


# Measures -----------------------------------------------------------------------------------------


def position_bias(answers: Answers) -> PerAnnotator[Share]:
    """Pairwise choices (ties aside) for the response shown first, against 1/2."""
    rows = (answers.kind == KINDS[TaskKind.PAIRWISE]) & (answers.first >= 0)
    return _shares(answers, answers.annotator[rows], answers.first[rows], answers.chance[rows])


def ranking_position_bias(answers: Answers) -> PerAnnotator[Share]:
    """Rankings whose top group holds the response shown first, against the chance of that."""
    rows = (answers.kind == KINDS[TaskKind.RANKING]) & (answers.first >= 0)
    return _shares(answers, answers.annotator[rows], answers.first[rows], answers.chance[rows])


def length_bias(answers: Answers) -> PerAnnotator[Share]:
    """Votes on pairs (ties and equal lengths aside) won by the longer response, against 1/2."""
    rows = (answers.vote_value != 0) & (answers.vote_longer != 0)
    longer_won = (np.sign(answers.vote_value[rows]) == answers.vote_longer[rows]).astype(int)
    return _shares(answers, answers.vote_annotator[rows], longer_won, np.full(len(longer_won), 0.5))


@dataclass(frozen=True)
class Speed:
    answers: int  # with a measured time
    median_seconds: float | None
    fast: int  # answers faster than the floor
    fast_share: float | None


def speed(answers: Answers, fast_seconds: float) -> PerAnnotator[Speed]:
    """The median time an answer took, and the share of answers faster than `fast_seconds`."""
    rows = ~np.isnan(answers.seconds)
    annotator, seconds = answers.annotator[rows], answers.seconds[rows]

    def of(times: np.ndarray) -> Speed:
        if not len(times):
            return Speed(0, None, 0, None)
        fast = int((times < fast_seconds).sum())
        return Speed(len(times), float(np.median(times)), fast, fast / len(times))

    # Each annotator's times, sorted by annotator once rather than picked out of every answer per annotator.
    order = np.argsort(annotator, kind="stable")
    bounds = np.searchsorted(annotator[order], np.arange(len(answers.usernames) + 1))
    sorted_seconds = seconds[order]
    return PerAnnotator(
        of(seconds),
        {name: of(sorted_seconds[bounds[i] : bounds[i + 1]]) for i, name in enumerate(answers.usernames)},
    )


# Dawid–Skene --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DawidSkene:
    """A fitted Dawid–Skene model over I items, W workers and K labels."""

    posterior: np.ndarray  # (I, K): P(item i's true label is k | every answer)
    confusion: np.ndarray  # (W, K, K): [w, k, l] = P(worker w answers l | the true label is k)
    prior: np.ndarray  # (K,): P(a true label is k)
    iterations: int

    def accuracy(self) -> np.ndarray:
        """(W,) P(worker w answers the true label) = Σ_k π_k e_w[k, k]."""
        return np.einsum("k,wkk->w", self.prior, self.confusion)

    def competence(self) -> np.ndarray:
        """(W,) chance-corrected accuracy, (p_o − p_e) / (1 − p_e), Cohen's kappa between worker and truth.

        p_e = Σ_l q_w[l] π_l, where q_w[l] = Σ_k π_k e_w[k, l] is how often w answers l: the accuracy of someone
        who answers as often as w does each label but without looking. NaN where p_e is 1.
        """
        answered = np.einsum("k,wkl->wl", self.prior, self.confusion)  # (W, K)
        expected = answered @ self.prior  # (W,)
        with np.errstate(divide="ignore", invalid="ignore"):
            return (self.accuracy() - expected) / (1 - expected)


def dawid_skene(
    items: np.ndarray,
    workers: np.ndarray,
    labels: np.ndarray,
    n_labels: int,
    *,
    iterations: int = 100,
    tolerance: float = 1e-6,
    smoothing: float = 0.01,
) -> DawidSkene:
    """Fit Dawid–Skene by EM to answers (item, worker, label), each an index from 0; started from the majority.

    `smoothing` is added to every cell of the confusion counts (a weak Dirichlet prior), so that a label a worker
    never gave keeps a small probability instead of ruling out an item's label outright.
    """
    n_items, n_workers, k = int(items.max()) + 1, int(workers.max()) + 1, n_labels
    posterior = np.bincount(items * k + labels, minlength=n_items * k).reshape(n_items, k).astype(float)
    posterior /= posterior.sum(axis=1, keepdims=True)  # the share of votes per label: a soft majority vote
    cells = workers * k + labels  # (N,): the (worker, answered label) cell each answer counts in

    def m_step(posterior: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        prior = posterior.mean(axis=0)  # (K,)
        # counts[w, l, k] = Σ over w's answers l of P(the item's truth is k), then [w, k, l]
        counts = np.stack(
            [np.bincount(cells, weights=posterior[items, true], minlength=n_workers * k) for true in range(k)], axis=1
        ).reshape(n_workers, k, k)
        counts = counts.transpose(0, 2, 1) + smoothing
        return prior, counts / counts.sum(axis=2, keepdims=True)

    prior, confusion = m_step(posterior)
    iteration, gain, log_likelihood = 0, math.inf, -math.inf
    while iteration < iterations and gain >= tolerance:
        iteration += 1
        # log P(truth k, the item's answers) = log π_k + Σ over its answers log e_w[k, l], (I, K)
        log_confusion = np.log(confusion)
        log_joint = np.log(np.maximum(prior, 1e-300)) + np.stack(
            [np.bincount(items, weights=log_confusion[workers, true, labels], minlength=n_items) for true in range(k)],
            axis=1,
        )
        top = log_joint.max(axis=1, keepdims=True)
        posterior = np.exp(log_joint - top)
        evidence = posterior.sum(axis=1, keepdims=True)
        posterior /= evidence
        # The log-likelihood of the answers, Σ_i log Σ_k P(truth k, item i's answers), which EM raises at every
        # step: done when a step raises it by less than `tolerance` an answer.
        updated = float((top + np.log(evidence)).sum())
        gain, log_likelihood = (updated - log_likelihood) / len(items), updated
        prior, confusion = m_step(posterior)
    return DawidSkene(posterior, confusion, prior, iteration)


def competence(answers: Answers) -> PerAnnotator[float | None]:
    """Each annotator's Dawid–Skene competence over pairwise sides and over rating scores, weighted by answers in
    each; the project's is the mean over annotators weighted by their answers."""
    k = len(answers.usernames)
    total, weight = np.zeros(k), np.zeros(k)
    fits: list[tuple[np.ndarray, np.ndarray, np.ndarray, int]] = []
    if len(answers.vote_item):
        labels = PAIR_LABELS[np.sign(answers.vote_value) + 1]
        fits.append((answers.vote_item, answers.vote_annotator, labels, len(PAIR_LABELS)))
    if len(answers.rating_item) and answers.rating_points <= MAX_RATING_POINTS:
        fits.append((answers.rating_item, answers.rating_annotator, answers.rating_point, answers.rating_points))
    for items, workers, labels, n_labels in fits:
        scores = dawid_skene(items, workers, labels, n_labels).competence()  # (max worker + 1,)
        n = np.bincount(workers, minlength=len(scores))
        scored = (n > 0) & ~np.isnan(scores)
        total[: len(scores)] += np.where(scored, scores * n, 0)
        weight[: len(scores)] += np.where(scored, n, 0)
    by_annotator = {
        name: float(total[i] / weight[i]) if weight[i] else None for i, name in enumerate(answers.usernames)
    }
    project = float(total.sum() / weight.sum()) if weight.sum() else None
    return PerAnnotator(project, by_annotator)


def compared_answers(answers: Answers) -> PerAnnotator[int]:
    """What competence rests on: each annotator's votes and ratings on items that someone else answered too (an item
    only they answered says nothing of how right they are)."""
    k = len(answers.usernames)
    total = np.zeros(k, dtype=int)
    fitted = [(answers.vote_item, answers.vote_annotator)]
    if answers.rating_points <= MAX_RATING_POINTS:
        fitted.append((answers.rating_item, answers.rating_annotator))
    for items, annotators in fitted:
        if len(items):
            # One answer per item and annotator (a task is answered once), so two answers are two people.
            shared = np.bincount(items)[items] >= 2
            total += np.bincount(annotators[shared], minlength=k)
    return PerAnnotator(int(total.sum()), {name: int(total[i]) for i, name in enumerate(answers.usernames)})


# Gold ---------------------------------------------------------------------------------------------

GOLD_SCORE_TOLERANCE = 0  # points a rating may be off the gold score and still be right: 0, the score itself


def gold_accuracy(project: Project) -> PerAnnotator[Share]:
    """Each annotator's answers to the project's gold tasks (status gold) against the task's known answer (its
    annotation with source gold): the share right, with its 95 % interval. Right is, for a pairwise task, the same
    side (a, b or tie; strength and both-bad aside); for a rating, the gold score (within GOLD_SCORE_TOLERANCE); for
    a ranking, the same responses on top. Only answers given after the known answer count: a task made gold from its
    majority (Task.make_gold) would otherwise score its own voters right by construction. Gold tasks are few: read in
    one go, not into columns."""
    gold_tasks = Task.objects.filter(project=project, status=Task.Status.GOLD)
    fields = ("task_id", "id", "choice", "strength", "both_bad", "score", "ranking")
    known = {
        task_id: (kind, gold_id, answer)
        for task_id, kind, gold_id, *answer in Annotation.objects.filter(
            task__in=gold_tasks, source=Annotation.Source.GOLD
        )
        .order_by("id")
        .values_list("task_id", "task__kind", *fields[1:])
    }
    n: dict[int, int] = {}
    hits: dict[int, int] = {}
    for user_id, task_id, answer_id, *answer in (
        Annotation.objects.filter(task__in=gold_tasks, source=Annotation.Source.HUMAN)
        .order_by()
        .values_list("annotator_id", *fields)
    ):
        # Ids, not clocks, say which came first: they follow the order the rows were written in.
        if task_id in known and answer_id > known[task_id][1]:
            kind, _, gold = known[task_id]
            n[user_id] = n.get(user_id, 0) + 1
            hits[user_id] = hits.get(user_id, 0) + gold_right(kind, answer, gold)
    names = get_user_model().objects.in_bulk(list(n))
    return PerAnnotator(
        share(sum(hits.values()), sum(n.values())),
        {names[user_id].get_username(): share(hits[user_id], n[user_id]) for user_id in n},
    )


def gold_right(kind: str, answer: list, gold: list) -> bool:
    """Whether an answer (choice, strength, both_bad, score, ranking) is the gold answer, as gold_accuracy says."""
    choice, strength, both_bad, score, ranking = answer
    gold_choice, gold_strength, gold_both_bad, gold_score, gold_ranking = gold
    if kind == TaskKind.PAIRWISE:
        return pairwise_vote(choice, strength, both_bad).side == pairwise_vote(gold_choice, gold_strength, False).side
    if kind == TaskKind.RATING:
        return score is not None and gold_score is not None and abs(score - gold_score) <= GOLD_SCORE_TOLERANCE
    return bool(ranking and gold_ranking) and set(ranking[0]) == set(gold_ranking[0])


# Everything ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AnnotatorQuality:
    username: str | None  # None: the whole project
    answers: int
    first_position: Share  # pairwise choices for the response shown first
    first_ranked: Share  # rankings with the response shown first on top
    longer: Share  # votes on pairs won by the longer response
    speed: Speed
    competence: float | None
    compared: int  # answers on items someone else answered too (compared_answers)
    gold: Share  # answers to gold tasks that were right (gold_accuracy)


@dataclass(frozen=True)
class Quality:
    project: AnnotatorQuality
    annotators: list[AnnotatorQuality]  # by username


def annotator_quality(project: Project, *, fast_seconds: float) -> Quality:
    """Every measure above, for the project and each annotator, from one read of its annotations."""
    answers = read_answers(project)
    measures: dict[str, PerAnnotator] = {
        "first_position": position_bias(answers),
        "first_ranked": ranking_position_bias(answers),
        "longer": length_bias(answers),
        "speed": speed(answers, fast_seconds),
        "competence": competence(answers),
        "compared": compared_answers(answers),
    }
    gold = gold_accuracy(project)  # of those who answered gold tasks only
    counts = np.bincount(answers.annotator, minlength=len(answers.usernames))

    def row(username: str | None, n: int) -> AnnotatorQuality:
        fields = {
            name: measure.project if username is None else measure.annotators[username]
            for name, measure in measures.items()
        }
        fields["gold"] = gold.project if username is None else gold.annotators.get(username, share(0, 0))
        return AnnotatorQuality(username=username, answers=n, **fields)

    return Quality(
        project=row(None, len(answers.annotator)),
        annotators=sorted(
            (row(name, int(counts[i])) for i, name in enumerate(answers.usernames)), key=lambda r: r.username
        ),
    )
