"""The lead's settings page (/p/<slug>/settings/): every setting in one atomic save, errors by field, refusals and
confirmations against work already done, the live previews; and a task previewed as annotators see it, no lease."""

import re
from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError

from annotate import models
from annotate.models import Annotation, Assignment, Judge, Project, Task
from tests.annotate.test_pages import make_task

HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def lead_client(client, lead):
    client.force_login(lead)
    return client


def url(project, rest=""):
    return f"/p/{project.slug}/settings/{rest}"


def preview_url(task):
    return f"/p/{task.project.slug}/tasks/{task.pk}/preview/"


def settings_data(project, **changes):
    """The form as the page posts it for the project's saved settings, with `changes`."""
    data = {
        "task_kinds": project.task_kinds,
        "text_format": project.text_format,
        "overlap": project.overlap,
        "fill": project.fill,
        "lease_length": project.lease_length.total_seconds() / 60,
        "max_open_leases": project.max_open_leases,
        "gold_rate": project.gold_rate,
        "edit_window_minutes": project.edit_window_minutes,
        "rating_min": project.rating_min,
        "rating_max": project.rating_max,
        "labels": "\n".join(project.labels),
        "guidelines": project.guidelines,
        "samples_per_prompt": project.samples_per_prompt,
        "sample_prompts": project.sample_prompts,
        "pair_selection": project.pair_selection,
        "judge": project.judge_id or "",
        "routing_confidence": project.routing_confidence,
        "routing_audit_share": project.routing_audit_share,
        "suggestion_control_share": project.suggestion_control_share,
        **{f"description-{point}": text for point, text in project.rating_descriptions.items()},
    }
    for flag in ("sample_rating_tasks", "judge_votes_count", "routing", "show_judge_suggestions"):
        if getattr(project, flag):
            data[flag] = "on"
    return {key: value for key, value in {**data, **changes}.items() if value is not None}


def rated(task, annotator, score, labels=()):
    return Annotation.objects.create(task=task, annotator=annotator, score=score, labels=list(labels))


class TestAccess:
    def test_leads_only_annotators_and_outsiders_get_404(self, client, project, lead, annotator, outsider):
        task = make_task(project, "rating", ["Two."])
        assert client.get(url(project)).status_code == 302  # to the login page
        for user in (annotator, outsider):
            client.force_login(user)
            assert client.get(url(project)).status_code == 404
            assert client.get(preview_url(task)).status_code == 404
            for path in ("", "guidelines-preview/", "scale-points/"):
                response = client.post(url(project, path), settings_data(project, guidelines="Mine now."))
                assert response.status_code == 404, path
        project.refresh_from_db()
        assert project.guidelines == "Prefer the **helpful** answer."
        client.force_login(lead)
        assert client.get(url(project)).status_code == 200
        assert client.get(preview_url(task)).status_code == 200

    def test_linked_from_the_project_page_for_leads_only(self, client, project, lead, annotator):
        client.force_login(lead)
        assert f'href="{url(project)}"' in client.get(f"/p/{project.slug}/").content.decode()
        client.force_login(annotator)
        assert f'href="{url(project)}"' not in client.get(f"/p/{project.slug}/").content.decode()


class TestSaving:
    def test_the_page_shows_every_setting_labelled(self, lead_client, project):
        page = lead_client.get(url(project)).content.decode()

        for kind in ("rating", "pairwise", "ranking"):
            assert re.search(rf'<input type="checkbox" name="task_kinds" value="{kind}"[^>]* checked>', page), kind
        for name in (
            "overlap",
            "lease_length",
            "fill",
            "rating_min",
            "rating_max",
            "labels",
            "guidelines",
            "edit_window_minutes",
        ):
            assert f'<label for="id_{name}"' in page, name
        assert '<label for="description-1">Point 1</label>' in page and 'value="Useless"' in page
        assert 'name="description-5" value="Ideal"' in page
        assert 'name="lease_length" value="30"' in page  # minutes
        assert "factual error\nunsafe\noff-topic</textarea>" in page
        assert '<option value="uncertainty">' in page and '<option value="depth">' in page

    def test_saves_every_setting_at_once(self, lead_client, project):
        data = settings_data(
            project,
            task_kinds=["rating", "pairwise"],
            overlap=3,
            fill="depth",
            lease_length="1.5",
            rating_min=0,
            rating_max=3,
            labels="unsafe\n\n  rude  \n",
            guidelines="# Be kind",
            pair_selection="uncertainty",
            edit_window_minutes=45,
            **{"description-0": " Harmful ", "description-3": "Ideal", "description-5": "Left out"},
        )

        response = lead_client.post(url(project), data)

        assert response.status_code == 302 and response.url == url(project)
        project.refresh_from_db()
        assert project.task_kinds == ["rating", "pairwise"]
        assert (project.overlap, project.fill, project.pair_selection) == (3, "depth", "uncertainty")
        assert project.edit_window_minutes == 45
        assert project.lease_length == timedelta(seconds=90)
        assert (project.rating_min, project.rating_max) == (0, 3)
        # Trimmed; blank points and points the scale left out (5) have none.
        assert project.rating_descriptions == {"0": "Harmful", "1": "Useless", "3": "Ideal"}
        assert project.labels == ["unsafe", "rude"]
        assert project.guidelines == "# Be kind"
        assert "Settings saved" in lead_client.get(url(project)).content.decode()

    def test_field_errors_name_the_field_and_nothing_is_saved(self, lead_client, project):
        data = settings_data(project, task_kinds=None, overlap=0, labels="unsafe\nunsafe", guidelines="New")

        response = lead_client.post(url(project), data)

        assert response.status_code == 400
        errors = response.context["form"].errors
        assert errors["task_kinds"] == ["Enable at least one task kind."]  # the model's own messages
        assert errors["labels"] == ["Label names must be unique."]
        assert errors["overlap"] == ["Ensure this value is greater than or equal to 1."]
        page = response.content.decode()
        assert 'id="settings-errors" class="error-summary" role="alert"' in page
        assert '<a href="#id_overlap">Overlap (annotations per task)</a>: Ensure this value' in page
        assert '<a href="#id_task_kinds_0">Task kinds</a>: Enable at least one task kind.' in page
        assert re.search(r'<input type="number" name="overlap" value="0"[^>]*aria-invalid="true"', page)
        assert 'aria-describedby="id_overlap_helptext id_overlap_error"' in page
        assert ">\nNew</textarea>" in page  # what was typed stays
        project.refresh_from_db()
        assert project.guidelines == "Prefer the **helpful** answer." and project.overlap == 2

    @pytest.mark.parametrize(
        ("changes", "field", "message"),
        [
            ({"lease_length": "0.5"}, "lease_length", "A lease must last at least a minute."),
            ({"lease_length": "soon"}, "lease_length", "Enter a number."),
            ({"lease_length": "1e30"}, "lease_length", "Give a number of minutes."),
            ({"rating_min": 5, "rating_max": 5}, "rating_max", "The top of the scale must be above the bottom."),
            ({"rating_min": 0, "rating_max": 200}, "rating_max", "A scale has at most 101 points (0–100, say)."),
            ({"max_open_leases": 0}, "max_open_leases", "Ensure this value is greater than or equal to 1."),
            ({"fill": "sideways"}, "fill", "Select a valid choice. sideways is not one of the available choices."),
        ],
    )
    def test_each_refused_value_is_named_by_its_field(self, lead_client, project, changes, field, message):
        response = lead_client.post(url(project), settings_data(project, **changes))

        assert response.status_code == 400
        assert response.context["form"].errors == {field: [message]}

    def test_the_admin_is_held_to_the_same_rules(self, project, annotator):
        task = make_task(project, "rating", ["Two."])
        rated(task, annotator, 5)
        project.rating_max, project.rating_descriptions, project.lease_length = 4, {}, timedelta(0)

        with pytest.raises(ValidationError) as refused:
            project.full_clean()

        assert set(refused.value.message_dict) == {"rating_max", "lease_length"}

    def test_a_save_writes_only_the_settings(self, lead_client, project):
        make_task(project, "rating", ["Two."])
        lead_client.get(url(project))  # the page is read with a task counter of 1 ...
        Project.objects.filter(pk=project.pk).update(task_count=7)  # ... that a submit or import moves meanwhile

        lead_client.post(url(project), settings_data(project, guidelines="New"))

        project.refresh_from_db()
        assert project.task_count == 7 and project.guidelines == "New"


class TestWorkAlreadyDone:
    def test_a_scale_that_leaves_out_given_scores_is_refused(self, lead_client, project, annotator, make_user):
        task = make_task(project, "rating", ["Two."])
        rated(task, annotator, 5)
        rated(task, make_user("ann"), 4)

        response = lead_client.post(url(project), settings_data(project, rating_min=2, rating_max=3))

        assert response.status_code == 400
        assert response.context["form"].errors["rating_max"] == [
            "2 answers scored above 3 (up to 5): a scale cannot leave out answers already given; start a new project "
            "for another scale."
        ]
        assert "rating_min" not in response.context["form"].errors
        project.refresh_from_db()
        assert project.rating_max == 5

    def test_removing_or_renaming_a_label_that_answers_carry_is_refused(self, lead_client, project, annotator):
        task = make_task(project, "rating", ["Two."])
        rated(task, annotator, 2, ["unsafe", "off-topic"])

        refused = lead_client.post(url(project), settings_data(project, labels="factual error\nUnsafe"))
        allowed = lead_client.post(url(project), settings_data(project, labels="unsafe\noff-topic\nrude"))

        assert refused.status_code == 400
        message = refused.context["form"].errors["labels"][0]
        assert message.startswith("Answers carry labels you removed: “off-topic” (1 answer), “unsafe” (1 answer).")
        assert allowed.status_code == 302
        project.refresh_from_db()
        assert project.labels == ["unsafe", "off-topic", "rude"]

    def test_switching_off_a_kind_with_open_tasks_asks_first_then_saves(self, lead_client, project):
        make_task(project, "pairwise", ["A.", "B."])
        make_task(project, "pairwise", ["C.", "D."], external_id="p2")
        make_task(project, "ranking", ["E.", "F."], external_id="p3")
        data = settings_data(project, task_kinds=["rating", "ranking"])

        asked = lead_client.post(url(project), data)

        assert asked.status_code == 409
        page = asked.content.decode()
        assert "Side-by-side pairwise is switched off: its 2 open tasks are given to no one" in page
        confirm = re.search(r'name="confirm" value="(\w+)"', page).group(1)
        project.refresh_from_db()
        assert project.task_kinds == ["rating", "pairwise", "ranking"]

        # A confirmation of other changes than those now asked for does not count.
        stale = lead_client.post(url(project), {**data, "task_kinds": ["rating"], "confirm": confirm})
        assert stale.status_code == 409

        saved = lead_client.post(url(project), {**data, "confirm": confirm})

        assert saved.status_code == 302
        project.refresh_from_db()
        assert project.task_kinds == ["rating", "ranking"]

    def test_a_kind_with_no_open_tasks_is_switched_off_without_asking(self, lead_client, project):
        task = make_task(project, "pairwise", ["A.", "B."])
        Task.objects.filter(pk=task.pk).update(status=Task.Status.COMPLETE)

        assert lead_client.post(url(project), settings_data(project, task_kinds=["rating"])).status_code == 302

    def test_a_scale_moved_under_given_ratings_and_an_overlap_open_tasks_keep_are_explained(
        self, lead_client, project, annotator
    ):
        rated(make_task(project, "rating", ["Two."]), annotator, 3)

        asked = lead_client.post(url(project), settings_data(project, rating_max=7, overlap=3))

        assert asked.status_code == 409
        changes = asked.context["changes"]
        assert changes[0].startswith("The scale goes from 1–5 to 1–7 while 1 answer was given on the old one.")
        assert "its midpoint (4 instead of 3)" in changes[0]
        assert changes[1] == (
            "Overlap 2 → 3 applies to tasks added from now on; the open tasks (1) keep the overlap they were made with."
        )


class TestLivePreviews:
    def test_the_guidelines_preview_is_the_guidelines_page_rendering_of_the_draft(self, lead_client, project):
        draft = "# Rules\n\nPrefer **true** answers.\n\n<script>alert(1)</script> [x](javascript:alert(2))"

        preview = lead_client.post(url(project, "guidelines-preview/"), {"guidelines": draft}, **HTMX)
        Project.objects.filter(pk=project.pk).update(guidelines=draft)
        page = lead_client.get(f"/p/{project.slug}/guidelines/").content.decode()

        shown = preview.content.decode().strip()
        assert shown.startswith('<div class="md" hx-disable><h1>Rules</h1>')
        assert "<strong>true</strong>" in shown and "&lt;script&gt;" in shown and 'href="javascript' not in shown
        assert shown in page
        empty = lead_client.post(url(project, "guidelines-preview/"), {"guidelines": ""}, **HTMX)
        assert "No guidelines yet." in empty.content.decode()

    def test_the_scale_region_has_a_row_per_point_keeping_what_was_typed(self, lead_client, project):
        data = settings_data(project, rating_min=0, rating_max=3, **{"description-2": "Fine"})

        region = lead_client.post(url(project, "scale-points/"), data, **HTMX).content.decode()

        assert re.findall(r'<label for="description-(-?\d+)">', region) == ["0", "1", "2", "3"]
        assert 'name="description-1" value="Useless"' in region and 'name="description-2" value="Fine"' in region
        assert "<html" not in region

    def test_bounds_that_make_no_scale_keep_the_descriptions_hidden_until_they_do(self, lead_client, project):
        data = settings_data(project, rating_min=6, rating_max="")

        region = lead_client.post(url(project, "scale-points/"), data, **HTMX).content.decode()

        assert "Set the bottom below the top, at most 101 points in all" in region
        assert '<input type="hidden" name="description-5" value="Ideal">' in region


class TestTaskPreview:
    @pytest.fixture
    def in_task_order(self, monkeypatch):
        monkeypatch.setattr(models.random, "shuffle", lambda ids: None)

    @pytest.mark.parametrize(
        ("kind", "texts"),
        [
            ("rating", ["**Two**, see <b>this</b>."]),
            ("pairwise", ["1. Two\n2. Three", "2*3*4 = 24"]),
            ("ranking", ["`x`", "| a | b |\n|---|---|\n| 1 | 2 |", "C:\\Users"]),
        ],
    )
    def test_shows_the_texts_and_controls_exactly_as_the_annotation_page(
        self, client, project, lead, annotator, in_task_order, kind, texts
    ):
        task = make_task(project, kind, texts)
        client.force_login(annotator)
        annotated = client.get(f"/p/{project.slug}/annotate/").content.decode()
        client.force_login(lead)

        previewed = client.get(preview_url(task)).content.decode()

        def shown(page):
            region = page[page.index('id="task"') : page.index('<dialog id="guidelines"')]
            texts = re.findall(r'<div class="(?:md|raw)" hx-disable>.*?</div>', region, re.S)
            controls = re.findall(r"<(?:input|select|textarea|option)[^>]*>", region)
            return texts, [c for c in controls if 'name="csrfmiddlewaretoken"' not in c]

        assert shown(previewed) == shown(annotated)
        assert len(shown(previewed)[0]) == 2 * (len(texts) + 4)  # each text formatted and raw

    def test_takes_no_lease_and_records_nothing(self, lead_client, project, annotator):
        task = make_task(project, "pairwise", ["A.", "B."])

        for _ in range(2):
            assert lead_client.get(preview_url(task)).status_code == 200

        assert not Assignment.objects.exists() and not Annotation.objects.exists()
        assert project.remaining_for(annotator) == 1

    def test_says_it_is_a_preview_and_nothing_in_it_can_be_sent(self, lead_client, project):
        first = make_task(project, "rating", ["Two."])
        task = make_task(project, "ranking", ["A.", "B."], external_id="p2")
        Project.objects.filter(pk=project.pk).update(task_kinds=["rating"])

        page = lead_client.get(preview_url(task)).content.decode()

        assert "Preview — answers are not recorded." in page
        assert "Annotators are given no n-way ranking tasks now: that kind is switched off" in page
        assert '<fieldset class="preview-controls" disabled>' in page
        assert 'id="answer"' not in page and 'id="skip"' not in page
        assert "/assignments/" not in page and "hx-post" not in page
        assert f'href="{preview_url(first)}">← Previous task' in page and "Next task" not in page

    def test_says_when_annotators_are_not_given_the_task(self, lead_client, project):
        task = make_task(project, "rating", ["Two."])
        Task.objects.filter(pk=task.pk).update(status=Task.Status.COMPLETE)

        assert "It is complete: annotators are given it no more." in lead_client.get(preview_url(task)).content.decode()

    def test_a_task_of_another_project_is_404(self, lead_client, project):
        other = Project.objects.create(name="Other", slug="other")
        task = make_task(other, "rating", ["Two."])

        assert lead_client.get(f"/p/{project.slug}/tasks/{task.pk}/preview/").status_code == 404

    def test_the_settings_page_links_a_preview_of_each_kind_there_is(self, lead_client, project):
        rating = make_task(project, "rating", ["Two."])
        make_task(project, "rating", ["Three."], external_id="p2")
        ranking = make_task(project, "ranking", ["A.", "B."], external_id="p3")

        page = lead_client.get(url(project)).content.decode()

        assert f'<a href="{preview_url(rating)}">single-sided rating</a>' in page
        assert f'<a href="{preview_url(ranking)}">n-way ranking</a>' in page
        assert "pairwise</a>" not in page


class TestJudge:
    @pytest.fixture
    def judge(self, project):
        return Judge.create(project, "rm", kind=Judge.Kind.LLM, endpoint="http://judge.invalid/v1", model_name="m")

    def test_saves_the_judge_routing_and_suggestions(self, lead_client, project, judge):
        page = lead_client.get(url(project)).content.decode()
        assert f'<option value="{judge.pk}">rm — LLM (OpenAI-compatible endpoint)</option>' in page
        for name in ("routing", "routing_confidence", "routing_audit_share", "show_judge_suggestions"):
            assert f'<label for="id_{name}"' in page, name
        data = settings_data(project, judge=judge.pk, routing="on", routing_confidence="0.9", routing_audit_share="0.2")
        data.update(show_judge_suggestions="on", suggestion_control_share="0.25")

        assert lead_client.post(url(project), data).status_code == 302

        project.refresh_from_db()
        assert (project.judge, project.routing, project.show_judge_suggestions) == (judge, True, True)
        assert (project.routing_confidence, project.routing_audit_share, project.suggestion_control_share) == (
            0.9,
            0.2,
            0.25,
        )

    @pytest.mark.parametrize(
        ("changes", "field", "message"),
        [
            ({"routing": "on"}, "routing", "Hybrid labelling routes tasks by the project judge's answers: choose"),
            ({"show_judge_suggestions": "on"}, "show_judge_suggestions", "A suggestion is the project judge's"),
            ({"routing_confidence": "1.5"}, "routing_confidence", "Ensure this value is less than or equal to 1."),
            ({"routing_audit_share": "-0.1"}, "routing_audit_share", "Ensure this value is greater than or equal"),
            ({"suggestion_control_share": "half"}, "suggestion_control_share", "Enter a number."),
        ],
    )
    def test_each_refused_value_is_named_by_its_field(self, lead_client, project, changes, field, message):
        response = lead_client.post(url(project), settings_data(project, **changes))

        assert response.status_code == 400
        errors = response.context["form"].errors
        assert list(errors) == [field] and errors[field][0].startswith(message)
        project.refresh_from_db()
        assert not project.routing and not project.show_judge_suggestions

    def test_another_projects_judge_is_neither_offered_nor_taken(self, lead_client, project, judge):
        other = Project.objects.create(name="Other", slug="other")
        theirs = Judge.create(other, "theirs", kind=Judge.Kind.LLM, endpoint="http://judge.invalid/v1", model_name="m")

        assert "theirs" not in lead_client.get(url(project)).content.decode()
        response = lead_client.post(url(project), settings_data(project, judge=theirs.pk))

        assert response.status_code == 400 and list(response.context["form"].errors) == ["judge"]
        # The admin goes by Project.clean, which says whose judge it is.
        project.judge, project.routing = theirs, True
        with pytest.raises(ValidationError) as refused:
            project.full_clean()
        assert refused.value.message_dict == {
            "judge": ["theirs is another project's judge: choose one of this project's."]
        }
