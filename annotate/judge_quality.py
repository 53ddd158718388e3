"""How far a judge agrees with people (calibration). Owned by the calibration work of issue 16, which extends it;
`measured_agreement`'s signature is what exports and rounds weigh judge votes by."""

from annotate.models import Annotation, Judge, TaskKind
from annotate.votes import agreed_score, decide, pairwise_vote, tally


def measured_agreement(judge: Judge) -> float | None:
    """The share of tasks answered by people and by the judge where the judge's answer is the human majority's
    (pairwise: the winning side, a tie for a tie; rating: the agreed score); None before any such task."""
    people = (
        Annotation.objects.filter(task__project=judge.project_id, source=Annotation.Source.HUMAN)
        .exclude(annotator__in=judge.project.excluded_voters())
        .filter(task__kind__in=[TaskKind.PAIRWISE, TaskKind.RATING])
    )
    judged = {
        row["task_id"]: row
        for row in Annotation.objects.filter(annotator=judge.user).values(
            "task_id", "choice", "strength", "both_bad", "score"
        )
    }
    by_task: dict[int, list[dict]] = {}
    for row in people.filter(task__in=list(judged)).values(
        "task_id", "task__kind", "choice", "strength", "both_bad", "score"
    ):
        by_task.setdefault(row["task_id"], []).append(row)
    agreed = 0
    for task_id, rows in by_task.items():
        mine = judged[task_id]
        if rows[0]["task__kind"] == TaskKind.RATING:
            agreed += agreed_score([row["score"] for row in rows]) == mine["score"]
        else:
            majority = decide(tally(pairwise_vote(row["choice"], row["strength"], row["both_bad"]) for row in rows))
            agreed += majority.winner == pairwise_vote(mine["choice"], mine["strength"], mine["both_bad"]).side
    return agreed / len(by_task) if by_task else None
