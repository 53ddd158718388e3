"""The Quality page (/p/<slug>/quality/): leads only; the figures as last computed, flagged ones first; a recompute
button; the thresholds; and pause, resume, exclude and include per annotator, with htmx and without."""

import re

import pytest

from annotate.models import Membership, MembershipEvent, QualityReport
from annotate.quality_reports import request_quality, run_quality_report
from tests.annotate.test_quality_reports import answered

HTMX = {"HX-Request": "true"}


@pytest.fixture
def lead_client(client, lead):
    client.force_login(lead)
    return client


@pytest.fixture
def computed(project, annotator, make_user, enqueued, django_capture_on_commit_callbacks):
    """Figures for two annotators: `annotator` answers in a second and always for the first shown; `aaron` not."""
    careful = make_user("aaron")
    Membership.objects.create(project=project, user=careful)
    answered(project, annotator, 24, seconds=1)
    for i in range(24):
        answered(project, careful, 1, first=i % 2 == 0)
    with django_capture_on_commit_callbacks(execute=True):
        request_quality(project)
    return run_quality_report(QualityReport.objects.get(project=project))


def url(project, rest=""):
    return f"/p/{project.slug}/quality/{rest}"


class TestAccess:
    def test_leads_only_as_the_stats_page(self, client, project, lead, annotator, outsider):
        assert client.get(url(project)).status_code == 302  # to the login page
        for user, status in ((annotator, 404), (outsider, 404), (lead, 200)):
            client.force_login(user)
            assert client.get(url(project)).status_code == status, user
        for path in ("recompute/", "thresholds/", f"members/{annotator.username}/"):
            client.force_login(annotator)
            assert client.post(url(project, path), {"action": "paused", "reason": "x"}).status_code == 404, path
        assert not Membership.objects.get(user=annotator).paused

    def test_linked_from_the_project_and_stats_pages_for_leads(self, lead_client, project):
        for page in (f"/p/{project.slug}/", f"/p/{project.slug}/stats/"):
            assert f'href="{url(project)}"' in lead_client.get(page).content.decode(), page


class TestFigures:
    def test_before_any_figures_the_members_are_listed_and_the_page_says_how_they_come(
        self, lead_client, project, annotator
    ):
        page = lead_client.get(url(project)).content.decode()

        assert "No figures yet" in page and "Recompute now" in page
        assert annotator.username in page

    def test_flagged_annotators_first_with_their_figures_and_intervals(self, lead_client, project, computed):
        page = lead_client.get(url(project)).content.decode()

        assert "Figures computed" in page
        row = page[page.index('id="annotator-1"') : page.index('id="annotator-2"')]
        assert re.search(r'class="who">\s*annotator\s', row)  # flagged first, though later in the alphabet than aaron
        assert "position_bias" in row and "too_fast" in row
        assert "100 %" in row and "86–100 %" in row  # 24 of 24 for the first shown, its Wilson interval
        assert "p &lt; 0.0001" in row and "24 of 24" in row  # and 24 of 24 answers fast
        careful_row = page[page.index('id="annotator-2"') : page.index("</tbody>")]
        assert "50 %" in careful_row and "flag-" not in careful_row


class TestRecompute:
    def test_queues_one_at_a_time(self, lead_client, project, lead, enqueued, django_capture_on_commit_callbacks):
        with django_capture_on_commit_callbacks(execute=True):
            first = lead_client.post(url(project, "recompute/"))
        assert first.status_code == 302
        report = QualityReport.objects.get(project=project)
        assert (report.status, report.requested_by, enqueued) == ("pending", lead, [report.pk])
        assert "Recomputing" in lead_client.get(url(project)).content.decode()

        with django_capture_on_commit_callbacks(execute=True):
            again = lead_client.post(url(project, "recompute/"), headers=HTMX)

        assert again.status_code == 200 and enqueued == [report.pk]
        region = again.content.decode()
        assert region.lstrip().startswith('<section id="quality-status"')  # only the region, for htmx
        assert "already under way" in region and "disabled" in region
        assert 'hx-trigger="every 2s"' in region  # it polls until the figures are in

    def test_the_poll_says_when_newer_figures_are_ready_and_stops(self, lead_client, project, computed, enqueued):
        shown = computed.computed_at.isoformat()
        request_quality(project)
        assert 'hx-trigger="every 2s"' in lead_client.get(url(project), {"shown": shown}, headers=HTMX).content.decode()

        run_quality_report(QualityReport.objects.get(pk=computed.pk))
        poll = lead_client.get(url(project), {"shown": shown}, headers=HTMX).content.decode()

        assert "Show the new figures" in poll and "hx-trigger" not in poll


class TestThresholds:
    def test_refused_values_are_named_by_field_and_nothing_is_saved(self, lead_client, project):
        page = lead_client.post(
            url(project, "thresholds/"),
            {"fast_seconds": "-1", "min_gold_accuracy": "0.7", "min_competence": "2", "position_bias_p": "x",
             "max_fast_share": "0.25"},
        )  # fmt: skip

        assert page.status_code == 400
        text = page.content.decode()
        assert text.count('class="errorlist"') == 3
        assert 'id="id_min_competence_error"' in text and "less than or equal to 1" in text
        project.refresh_from_db()
        assert (project.fast_seconds, project.min_competence) == (5, 0.2)

    def test_saved_flags_follow_at_once_and_a_new_fast_floor_recomputes(
        self, lead_client, project, computed, enqueued, django_capture_on_commit_callbacks
    ):
        values = {"fast_seconds": "5", "min_gold_accuracy": "0.8", "min_competence": "0.3", "position_bias_p": "0",
                  "max_fast_share": "1"}  # fmt: skip
        saved = lead_client.post(url(project, "thresholds/"), values)
        assert saved.status_code == 302 and enqueued == [computed.pk]  # the first computation only
        page = lead_client.get(url(project)).content.decode()
        assert "flag-" not in page[page.index("<tbody>") : page.index("</tbody>")]

        with django_capture_on_commit_callbacks(execute=True):
            lead_client.post(url(project, "thresholds/"), {**values, "fast_seconds": "2"})

        project.refresh_from_db()
        assert (project.fast_seconds, project.min_competence, project.max_fast_share) == (2, 0.3, 1.0)
        assert enqueued == [computed.pk, computed.pk] and QualityReport.objects.get().status == "pending"


class TestDecisions:
    def test_pause_needs_a_reason_named_in_the_row(self, lead_client, project, annotator):
        page = lead_client.post(url(project, f"members/{annotator.username}/"), {"action": "paused", "reason": " "})

        assert page.status_code == 400
        text = page.content.decode()
        assert "Say why" in text and 'aria-invalid="true"' in text
        assert '<details class="decide" open>' in text
        assert not Membership.objects.get(user=annotator).paused

    def test_htmx_swaps_the_annotators_and_decisions_after_each(self, lead_client, project, annotator, lead):
        path = url(project, f"members/{annotator.username}/")
        refused = lead_client.post(path, {"action": "excluded", "reason": ""}, headers=HTMX)
        assert refused.status_code == 400 and refused.content.decode().lstrip().startswith('<section id="members"')

        done = lead_client.post(path, {"action": "excluded", "reason": "Gold accuracy 40 %."}, headers=HTMX)

        region = done.content.decode()
        assert done.status_code == 200 and region.lstrip().startswith('<section id="members"')
        assert "Excluded annotator&#x27;s votes" in region and "autofocus" in region
        assert "votes excluded" in region and 'value="included"' in region
        assert "Gold accuracy 40 %." in region  # the decision's record
        event = MembershipEvent.objects.get()
        assert (event.user, event.kind, event.by) == (annotator, "excluded", lead)

    def test_without_javascript_a_decision_redirects_and_says_what_it_did(self, lead_client, project, annotator):
        lead_client.post(url(project, f"members/{annotator.username}/"), {"action": "paused", "reason": "Too fast."})
        again = lead_client.post(
            url(project, f"members/{annotator.username}/"), {"action": "paused", "reason": "Still."}, follow=True
        )

        text = again.content.decode()
        assert "Nothing changed: annotator was so already." in text
        assert "badge-paused" in text and 'value="resumed"' in text
        assert MembershipEvent.objects.count() == 1

    def test_someone_not_a_member_cannot_be_decided_on(self, lead_client, project, outsider):
        assert (
            lead_client.post(url(project, "members/outsider/"), {"action": "paused", "reason": "x"}).status_code == 404
        )
        assert lead_client.post(url(project, "members/nobody/"), {"action": "paused", "reason": "x"}).status_code == 404
