"""How the model versions of a project compare, measured on human votes: round win rates and a leaderboard.

Votes. Every human annotation on a pairwise or ranking task whose responses come from two or more *entries*:
an entry is a model version (Response.model_version), or "reference data" for every response without one
(imported or written by a person), so that round 1 can be compared with what was imported. A pairwise vote
is one outcome between the entries of task positions A and B (the first and second response in position
order; the answer speaks of positions, not of the order shown). A ranking gives one outcome per pair of its
responses from different entries: the better group wins, two responses in one group tie. Both are read by the vote
model (annotate/votes.py), as exports read them. Strength ("much better") and "both bad" are not used: a vote says
who won, nothing more. Ratings are not used. An automatic tie (an eval pair whose two answers are the same text,
recorded by training/sampling.py with no one asked) is one tie vote like a person's, counted as such in `auto_ties`
so that the pages can say how many there were. Gold tasks (answers known, asked to measure annotators) and the votes
of members whose votes are excluded from the data count for nothing here.

Win rate of `new` over `old`: the mean score of `new` in their votes, a win 1, a tie 1/2, a loss 0, with a 95 %
Wilson score interval on that mean with n = the number of votes. Ties make the score's variance smaller than
the Bernoulli p(1 − p) Wilson assumes, so the interval is a little conservative; a ranking's pairs count as
separate votes, though they share an annotator and a moment, which makes it a little optimistic.

Leaderboard: a Bradley–Terry fit of all votes, P(i beats j) = σ(θ_i − θ_j), a tie half a win each way,
by maximum a posteriori with a weak prior (one virtual tie of every entry against a fixed opponent θ = 0), so
that an entry with only wins stays finite and one with few votes stays near the middle. Scores are on the Elo
scale, 400·log10(e)·θ, shifted so that the entries average 1000: 100 points apart is P = 1 / (1 + 10^(-1/4))
= 0.64. The 95 % intervals are bootstrap percentiles: `bootstrap` refits on annotations drawn with replacement
(a ranking's pairs stay together), with numpy's generator seeded by `seed`, so a page shows the same numbers
for the same votes.
"""

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from django.db.models import Exists, F, Max, Min, OuterRef, Q
from django.db.models.functions import Coalesce

from annotate.models import Annotation, Project, Task, TaskKind, TaskResponse
from annotate.votes import pairwise_vote, ranking_votes
from models_registry.models import ModelVersion

REFERENCE = "reference data"  # the entry of every response that no model version wrote
Z_95 = 1.959963984540054  # the standard normal's 97.5th percentile
PRIOR_GAMES = 1.0  # virtual games of every entry against θ = 0, half won
ELO_PER_NAT = 400 / math.log(10)
VOTE_SOURCES = [Annotation.Source.HUMAN, Annotation.Source.AUTO]  # imported preferences compare no versions


class Vote(NamedTuple):
    """One outcome between two entries (a model version's id, or None for reference data)."""

    annotation_id: int
    first: int | None
    second: int | None
    score: float  # of `first`: 1 it won, 0.5 a tie, 0 it lost
    auto: bool = False  # an automatic tie: the two answers were the same text


@dataclass(frozen=True)
class WinRate:
    wins: int
    ties: int
    losses: int
    n: int
    rate: float | None  # (wins + ties / 2) / n; None without votes
    low: float | None
    high: float | None
    auto_ties: int = 0  # of the ties: automatic ones (the same text on both sides)


@dataclass(frozen=True)
class RoundWinRate:
    version: ModelVersion
    parent: ModelVersion | None
    against_parent: WinRate | None
    previous: ModelVersion | None  # the policy registered just before, when it is not the parent
    against_previous: WinRate | None


@dataclass(frozen=True)
class Entry:
    name: str
    version: ModelVersion | None  # None: reference data
    score: float  # Elo scale, the entries' mean is 1000
    low: float
    high: float
    games: int
    wins: int
    ties: int
    auto_ties: int = 0  # of the ties: automatic ones

    @property
    def losses(self) -> int:
        return self.games - self.wins - self.ties


@dataclass(frozen=True)
class RewardAccuracy:
    version: ModelVersion
    accuracy: float | None  # on the round's held-out pairs
    human_eval_accuracy: float | None  # on held-out human votes, when the round measured it
    eval_pairs: int | None
    rating_spearman: float | None = None  # a model trained on ratings: rank correlation with held-out mean ratings


def entry_name(version: ModelVersion | None) -> str:
    return REFERENCE if version is None else f"{version.kind} v{version.version}"


def cross_version_votes(project: Project) -> list[Vote]:
    """Every human pairwise or ranking outcome, and every automatic tie, between two different entries of the
    project, by annotation; gold tasks and excluded members' votes aside."""
    # Model version ids start at 1, so 0 stands for reference data in SQL (NULLs would not compare).
    entry = Coalesce("response__model_version_id", 0)
    tasks = (
        Task.objects.filter(project=project, kind__in=[TaskKind.PAIRWISE, TaskKind.RANKING])
        .exclude(status=Task.Status.GOLD)
        .filter(Exists(Annotation.objects.filter(task=OuterRef("pk"), source__in=VOTE_SOURCES)))
        .alias(
            lowest=Min(Coalesce("task_responses__response__model_version_id", 0)),
            highest=Max(Coalesce("task_responses__response__model_version_id", 0)),
        )
        .filter(lowest__lt=F("highest"))  # responses from at least two entries
        .values("pk")
    )
    responses: dict[int, list[tuple[int, int | None]]] = {}  # task → (response, entry) in position order
    for task_id, response_id, version_id in (
        TaskResponse.objects.filter(task__in=tasks)
        .order_by("task_id", "position")
        .values_list("task_id", "response_id", entry)
    ):
        responses.setdefault(task_id, []).append((response_id, version_id or None))
    answers = (
        Annotation.objects.filter(task__in=tasks, source__in=VOTE_SOURCES)
        .exclude(annotator__in=project.excluded_voters())
        .filter(Q(task__kind=TaskKind.RANKING) | ~Q(choice=""))
        .order_by("id")
        .values_list("id", "task_id", "task__kind", "choice", "strength", "both_bad", "ranking", "source")
    )
    votes = []
    for annotation_id, task_id, kind, choice, strength, both_bad, ranking, source in answers:
        task_responses = responses[task_id]
        if kind == TaskKind.PAIRWISE:
            (_, a), (_, b) = task_responses[:2]
            auto = source == Annotation.Source.AUTO
            votes.append(Vote(annotation_id, a, b, pairwise_vote(choice, strength, both_bad).score, auto))
            continue
        entry_of = dict(task_responses)
        for (x, y), vote in ranking_votes(ranking, list(entry_of)).items():
            if entry_of[x] != entry_of[y]:
                votes.append(Vote(annotation_id, entry_of[x], entry_of[y], vote.score))
    return votes


def win_rate(
    project: Project, new: ModelVersion | None, old: ModelVersion | None, *, votes: list[Vote] | None = None
) -> WinRate:
    """How often `new` beats `old` (None: reference data) in human votes, ties as half, with a 95 % interval."""
    if votes is None:
        votes = cross_version_votes(project)
    new_id, old_id = _id(new), _id(old)
    scores = [v.score for v in votes if (v.first, v.second) == (new_id, old_id)]
    scores += [1 - v.score for v in votes if (v.first, v.second) == (old_id, new_id)]
    wins, ties, n = scores.count(1.0), scores.count(0.5), len(scores)
    if n == 0:
        return WinRate(0, 0, 0, 0, None, None, None)
    rate = (wins + ties / 2) / n
    low, high = wilson_interval(rate, n)
    auto = sum(v.auto for v in votes if {v.first, v.second} == {new_id, old_id})
    return WinRate(wins, ties, n - wins - ties, n, rate, low, high, auto)


def wilson_interval(p: float, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson's score interval for a share p of n: (p + z²/2n ± z·√(p(1−p)/n + z²/4n²)) / (1 + z²/n)."""
    denominator = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    # Exact at the ends, where rounding would leave the bound at 1 − 1e-16 instead of 1
    low = 0.0 if p == 0 else max(0.0, center - half)
    high = 1.0 if p == 1 else min(1.0, center + half)
    return low, high


def round_win_rates(project: Project, *, votes: list[Vote] | None = None) -> list[RoundWinRate]:
    """For each policy version, newest first: its win rate over its parent, and over the policy before it."""
    if votes is None:
        votes = cross_version_votes(project)
    policies = list(
        ModelVersion.objects.filter(project=project, kind=ModelVersion.Kind.POLICY)
        .select_related("parent", "training_round")
        .order_by("version")
    )
    rows = []
    for index, version in enumerate(policies):
        parent = version.parent
        previous = policies[index - 1] if index else None
        if previous is not None and previous == parent:
            previous = None
        if parent is None and previous is None:
            continue
        rows.append(
            RoundWinRate(
                version=version,
                parent=parent,
                against_parent=None if parent is None else win_rate(project, version, parent, votes=votes),
                previous=previous,
                against_previous=None if previous is None else win_rate(project, version, previous, votes=votes),
            )
        )
    return rows[::-1]


def leaderboard(
    project: Project, *, bootstrap: int = 200, seed: int = 0, votes: list[Vote] | None = None
) -> list[Entry]:
    """Every entry with votes, best first: Bradley–Terry score on the Elo scale with a 95 % bootstrap interval."""
    if votes is None:
        votes = cross_version_votes(project)
    if not votes:
        return []
    ids = sorted({v.first for v in votes} | {v.second for v in votes}, key=lambda i: (i is not None, i or 0))
    index = {entry: k for k, entry in enumerate(ids)}
    annotation_ids = sorted({v.annotation_id for v in votes})
    cluster = {annotation_id: c for c, annotation_id in enumerate(annotation_ids)}
    first = np.array([index[v.first] for v in votes])  # (V,)
    second = np.array([index[v.second] for v in votes])  # (V,)
    score = np.array([v.score for v in votes])  # (V,)
    clusters = np.array([cluster[v.annotation_id] for v in votes])  # (V,)

    k = len(ids)
    scores = _elo(_fit(k, first, second, score, np.ones(len(votes))))
    rng = np.random.default_rng(seed)
    draws = np.empty((bootstrap, k))
    for b in range(bootstrap):
        # Annotations drawn with replacement: a vote's weight is how often its annotation was drawn.
        weights = np.bincount(rng.integers(0, len(annotation_ids), len(annotation_ids)), minlength=len(annotation_ids))
        draws[b] = _elo(_fit(k, first, second, score, weights[clusters]))
    low, high = np.percentile(draws, [2.5, 97.5], axis=0) if bootstrap else (scores, scores)

    games = np.bincount(first, minlength=k) + np.bincount(second, minlength=k)
    wins = np.bincount(first, score == 1, minlength=k) + np.bincount(second, score == 0, minlength=k)
    ties = np.bincount(first, score == 0.5, minlength=k) + np.bincount(second, score == 0.5, minlength=k)
    auto = np.array([v.auto for v in votes])  # (V,)
    auto_ties = np.bincount(first, auto, minlength=k) + np.bincount(second, auto, minlength=k)
    versions = ModelVersion.objects.select_related("training_round").in_bulk([i for i in ids if i is not None])
    entries = [
        Entry(
            name=entry_name(versions.get(entry_id)),
            version=versions.get(entry_id),
            score=float(scores[i]),
            low=float(low[i]),
            high=float(high[i]),
            games=int(games[i]),
            wins=int(wins[i]),
            ties=int(ties[i]),
            auto_ties=int(auto_ties[i]),
        )
        for i, entry_id in enumerate(ids)
    ]
    return sorted(entries, key=lambda e: -e.score)


def _fit(k: int, first: np.ndarray, second: np.ndarray, score: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """θ (k,) maximising the Bradley–Terry log-likelihood of the weighted votes plus the prior, by Newton."""
    games = np.bincount(first * k + second, weight, minlength=k * k).reshape(k, k)
    games = games + games.T  # N_ij: weighted games between i and j, (k, k)
    # W_i: weighted points of i, plus half of its prior games
    points = np.bincount(first, weight * score, minlength=k) + np.bincount(second, weight * (1 - score), minlength=k)
    points = points + PRIOR_GAMES / 2

    def log_posterior(theta: np.ndarray) -> float:
        # Σ_ij N_ij·[S_ij log σ(θi−θj)] written as Σ_i W_i θ_i − Σ_{i<j} N_ij log(e^θi + e^θj), prior opponent at 0
        pairs = np.logaddexp(theta[:, None], theta[None, :])
        return float(points @ theta - np.triu(games * pairs, 1).sum() - PRIOR_GAMES * np.logaddexp(theta, 0).sum())

    theta = np.zeros(k)
    current = log_posterior(theta)
    for _ in range(100):
        p = 1 / (1 + np.exp(theta[None, :] - theta[:, None]))  # P_ij = σ(θi − θj), (k, k)
        prior_p = 1 / (1 + np.exp(-theta))
        gradient = points - (games * p).sum(axis=1) - PRIOR_GAMES * prior_p
        curvature = games * p * p.T  # N_ij σ(1 − σ)
        # −Hessian: a graph Laplacian of the games plus the prior's diagonal, so positive definite
        negative_hessian = np.diag(curvature.sum(axis=1) + PRIOR_GAMES * prior_p * (1 - prior_p)) - curvature
        step = np.linalg.solve(negative_hessian, gradient)
        # Halve the step while the posterior falls: a full Newton step from far away can overshoot.
        while log_posterior(theta + step) < current - 1e-12 and np.abs(step).max() > 1e-12:
            step = step / 2
        theta = theta + step
        current = log_posterior(theta)
        if np.abs(step).max() < 1e-9:
            break
    return theta


def _elo(theta: np.ndarray) -> np.ndarray:
    return 1000 + ELO_PER_NAT * (theta - theta.mean())


def reward_accuracies(project: Project) -> list[RewardAccuracy]:
    """Each reward model's accuracy as its round reported it (eval_report), newest first."""
    versions = ModelVersion.objects.filter(project=project, kind=ModelVersion.Kind.REWARD).select_related(
        "training_round"
    )
    return [
        RewardAccuracy(
            version=version,
            accuracy=version.eval_report.get("accuracy"),
            human_eval_accuracy=version.eval_report.get("human_eval_accuracy"),
            eval_pairs=version.eval_report.get("eval_pairs"),
            rating_spearman=version.eval_report.get("rating_spearman"),
        )
        for version in versions.order_by("-version")
    ]


def _id(version: ModelVersion | None) -> int | None:
    return None if version is None else version.pk
