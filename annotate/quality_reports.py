"""The Quality page's figures: computed by a worker into the project's QualityReport, flagged when read.

Every measure of annotate/quality.py reads every annotation (some 15 s at a million), so no request computes them:
a refresh reads the project once and stores each annotator's figures, and each judge's calibration against people
(annotate/judge_quality.py), as one JSON value, and the Quality page and
`GET /api/v1/projects/<slug>/quality/` read that row (`quality_for`). What a lead may change between refreshes is
read live: the flags, against the project's thresholds now, and whether each member is paused or excluded now.

- A refresh is queued (`request_quality`) by beat every ARBITER_QUALITY_REFRESH_MINUTES for each project with human
  or judge answers given or changed since it last looked, by a lead's "Recompute now", and when a lead changes
  fast_seconds (the fast shares count against it). One runs at a time per project: the report moves pending →
  running → ready or failed by conditional UPDATEs (annotate/jobs.py), so a second request while one is under way
  queues nothing and a message delivered twice runs once. A refresh whose worker died is failed by beat, which also
  sends again one whose message was lost; the last figures stay shown meanwhile, with when they were computed.
- Flags (`flags`), each only with enough answers to mean something, so that three answers cannot flag anyone:
  `low_gold_accuracy`  gold accuracy below min_gold_accuracy, over MIN_GOLD_ANSWERS gold answers or more;
  `low_competence`     Dawid–Skene competence below min_competence, over MIN_COMPARED_ANSWERS answers or more to
                       items someone else answered too;
  `position_bias`      the two-sided binomial test of the share for the response shown first gives a p-value below
                       position_bias_p, over MIN_POSITION_ANSWERS pairwise choices (ties aside) or more, or as many
                       rankings (the first shown on top, against its chance);
  `too_fast`           the share of answers faster than fast_seconds above max_fast_share, over MIN_TIMED_ANSWERS
                       timed answers or more.
"""

import logging
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from annotate.jobs import Heartbeat, fail_stale, hide_paths, move
from annotate.judge_quality import judges_figures, no_figures
from annotate.models import Annotation, AnnotationRevision, Membership, Project, QualityReport
from annotate.quality import AnnotatorQuality, Speed, annotator_quality, share

logger = logging.getLogger(__name__)
Status = QualityReport.Status

# The fewest answers on which each flag is raised. With 10 gold answers, an annotator who is right 85 % of the time
# falls under 70 % one time in 20; a random clicker (right 40 % of the time on pairs) stays above it one time in 18.
MIN_GOLD_ANSWERS = 10
# Dawid–Skene's competence of someone answering at random spreads ±0.15 around 0 at 30 answers (tests/annotate).
MIN_COMPARED_ANSWERS = 20
# p < 0.01 needs 8 of 8 at the least; 20 keeps a short run of one side from flagging anyone.
MIN_POSITION_ANSWERS = 20
MIN_TIMED_ANSWERS = 20
FLAGS = ("low_gold_accuracy", "low_competence", "position_bias", "too_fast")
THRESHOLDS = ("fast_seconds", "min_gold_accuracy", "min_competence", "position_bias_p", "max_fast_share")


def figures_of(row: AnnotatorQuality) -> dict[str, Any]:
    """One annotator's (or the project's) measures, flat, under the API's names."""
    return {
        "username": row.username,
        "answers": row.answers,
        "gold_answers": row.gold.n,
        "gold_right": row.gold.hits,
        "gold_accuracy": row.gold.share,
        "gold_accuracy_low": row.gold.low,
        "gold_accuracy_high": row.gold.high,
        "competence": row.competence,
        "compared_answers": row.compared,
        "first_position_choices": row.first_position.n,
        "first_position_share": row.first_position.share,
        "first_position_low": row.first_position.low,
        "first_position_high": row.first_position.high,
        "position_p_value": row.first_position.p_value,
        "first_ranked_rankings": row.first_ranked.n,
        "first_ranked_share": row.first_ranked.share,
        "first_ranked_chance": row.first_ranked.chance if row.first_ranked.n else None,
        "first_ranked_p_value": row.first_ranked.p_value,
        "longer_votes": row.longer.n,
        "longer_share": row.longer.share,
        "longer_low": row.longer.low,
        "longer_high": row.longer.high,
        "longer_p_value": row.longer.p_value,
        "timed_answers": row.speed.answers,
        "median_seconds": row.speed.median_seconds,
        "fast_answers": row.speed.fast,
        "fast_share": row.speed.fast_share,
    }


def _no_figures(username: str) -> dict[str, Any]:
    """The figures of a member who had answered nothing when the report was computed."""
    none = share(0, 0)
    return figures_of(AnnotatorQuality(username, 0, none, none, none, Speed(0, None, 0, None), None, 0, none))


def flags(figures: dict[str, Any], project: Project) -> list[str]:
    """What the figures say against the project's thresholds, in FLAGS order (see the module's docstring)."""
    found = []
    if figures["gold_answers"] >= MIN_GOLD_ANSWERS and figures["gold_accuracy"] < project.min_gold_accuracy:
        found.append("low_gold_accuracy")
    competence = figures["competence"]
    enough = figures["compared_answers"] >= MIN_COMPARED_ANSWERS
    if enough and competence is not None and competence < project.min_competence:
        found.append("low_competence")
    if any(
        figures[n] >= MIN_POSITION_ANSWERS and figures[p] is not None and figures[p] < project.position_bias_p
        for n, p in (("first_position_choices", "position_p_value"), ("first_ranked_rankings", "first_ranked_p_value"))
    ):
        found.append("position_bias")
    if figures["timed_answers"] >= MIN_TIMED_ANSWERS and figures["fast_share"] > project.max_fast_share:
        found.append("too_fast")
    return found


def quality_for(project: Project) -> dict[str, Any]:
    """What the Quality page and the API show: the report as last computed (or nothing yet), each annotator flagged
    against the thresholds now and with their membership now, flagged ones first; then members with no figures yet."""
    report = QualityReport.objects.filter(project=project).first()
    figures = report.figures if report else {}
    members = {m.user.get_username(): m for m in project.memberships.select_related("user")}
    rows = {row["username"]: row for row in figures.get("annotators", [])}
    for username, membership in members.items():
        if membership.role == Membership.Role.ANNOTATOR and username not in rows:
            rows[username] = _no_figures(username)
    annotators = []
    for username, row in rows.items():
        membership = members.get(username)
        annotators.append(
            {
                **row,
                "flags": flags(row, project),
                "member": membership is not None,
                "paused": bool(membership and membership.paused),
                "votes_excluded": bool(membership and membership.votes_excluded),
            }
        )
    annotators.sort(key=lambda row: (not row["flags"], row["username"]))
    return {
        "status": report.status if report else None,
        "requested_at": report.requested_at if report else None,
        "computed_at": report.computed_at if report else None,
        "fast_seconds": report.fast_seconds if report else None,
        "error": report.error if report else "",
        "thresholds": {name: getattr(project, name) for name in THRESHOLDS},
        "minimum_answers": {
            "low_gold_accuracy": MIN_GOLD_ANSWERS,
            "low_competence": MIN_COMPARED_ANSWERS,
            "position_bias": MIN_POSITION_ANSWERS,
            "too_fast": MIN_TIMED_ANSWERS,
        },
        "project": figures.get("project"),
        "annotators": annotators,
        "judges": judges_of(project, figures),
    }


def judges_of(project: Project, figures: dict[str, Any]) -> list[dict[str, Any]]:
    """The project's judges now, by name, each with its figures as last computed (empty for a judge added since)."""
    stored = {row["id"]: row for row in figures.get("judges", [])}
    judges = project.judges.select_related("user").order_by("name")
    return [stored.get(judge.pk) or no_figures(judge) for judge in judges]


# Refreshing ---------------------------------------------------------------------------------------


def request_quality(project: Project, *, user: Any = None) -> bool:
    """Queue a refresh of the project's figures, sent to a worker once committed; False (nothing queued) while one
    is pending or running: it reads whatever is there when it runs."""
    from annotate.tasks import refresh_quality  # annotate.tasks imports this module

    now = timezone.now()
    with transaction.atomic():
        report, created = QualityReport.objects.get_or_create(
            project=project, defaults={"requested_at": now, "requested_by": user}
        )
        if not created and not move(
            report, [Status.READY, Status.FAILED], status=Status.PENDING, requested_at=now, requested_by=user
        ):
            return False
        transaction.on_commit(lambda: refresh_quality.delay(report.pk))
    return True


def run_quality_report(report: QualityReport) -> QualityReport:
    """Compute a pending report's figures and mark it ready, or failed with the error; one no longer pending (a
    message delivered twice) is returned as it is."""
    if not report.claim():
        report.refresh_from_db()
        return report
    project = Project.objects.get(pk=report.project_id)  # the thresholds as they are now, not when it was queued
    heartbeat = Heartbeat(report.beat, settings.ARBITER_JOB_HEARTBEAT_SECONDS, name=f"heartbeat-quality-{report.pk}")
    try:
        with heartbeat:
            measured = annotator_quality(project, fast_seconds=project.fast_seconds)
            judges = judges_figures(project)
    except Exception as error:
        logger.exception("Quality report %s failed", report.pk)
        if not report.finish(Status.FAILED, error=hide_paths(str(error) or repr(error))):
            report.refresh_from_db()
        return report
    figures = {
        "project": figures_of(measured.project),
        "annotators": [figures_of(row) for row in measured.annotators],
        "judges": judges,
    }
    done = {"figures": figures, "computed_at": report.started_at, "fast_seconds": project.fast_seconds, "error": ""}
    if not report.finish(Status.READY, **done):
        report.refresh_from_db()  # the reaper failed it meanwhile (its heartbeat was late)
    return report


def fail_stale_quality() -> int:
    """Fail running refreshes whose worker stopped sending heartbeats; returns how many."""
    return len(
        fail_stale(
            QualityReport.objects.all(),
            timeout=settings.ARBITER_JOB_HEARTBEAT_TIMEOUT,
            message="The worker stopped sending heartbeats (last at {seen}): it was killed or lost its machine. "
            "The figures shown are the last ones computed; recompute to try again.",
        )
    )


def refresh_quality_reports() -> int:
    """Beat's look, every ARBITER_QUALITY_REFRESH_MINUTES: fail the refreshes whose worker died, send again those
    pending too long (their message lost), and queue one for every project with human or judge answers since the last
    look; returns how many it queued."""
    from annotate.tasks import refresh_quality

    fail_stale_quality()
    lost = QualityReport.objects.filter(
        status=Status.PENDING, requested_at__lt=timezone.now() - settings.ARBITER_JOB_HEARTBEAT_TIMEOUT
    )
    for report_id in lost.values_list("pk", flat=True):
        refresh_quality.delay(report_id)  # a second message is harmless: the claim refuses it
    # Only the annotations added since the last look are read (a range of ids, every project's), so an idle project
    # costs nothing. The mark is the same on every report; the first look reads the whole table once. An answer whose
    # transaction commits after this look with an id below `top` is left to the project's next new answer.
    top = Annotation.objects.aggregate(top=Max("pk"))["top"] or 0
    looked = QualityReport.objects.aggregate(mark=Max("annotation_mark"))["mark"] or 0
    changed = (
        # A judge's answers move its figures as people's move theirs.
        Annotation.objects.filter(
            pk__gt=looked, pk__lte=top, source__in=[Annotation.Source.HUMAN, Annotation.Source.JUDGE]
        )
        .order_by()
        .values_list("task__project_id", flat=True)
        .distinct()
    )
    # Answers changed on the "my work" page (Annotation.change) keep their id: their revisions are looked at alike.
    revised_top = AnnotationRevision.objects.aggregate(top=Max("pk"))["top"] or 0
    revised_looked = QualityReport.objects.aggregate(mark=Max("revision_mark"))["mark"] or 0
    revised = (
        AnnotationRevision.objects.filter(pk__gt=revised_looked, pk__lte=revised_top)
        .order_by()
        .values_list("annotation__task__project_id", flat=True)
        .distinct()
    )
    projects = Project.objects.filter(pk__in={*changed, *revised})
    queued = sum(request_quality(project) for project in projects)
    QualityReport.objects.filter(annotation_mark__lt=top).update(annotation_mark=top)
    QualityReport.objects.filter(revision_mark__lt=revised_top).update(revision_mark=revised_top)
    return queued
