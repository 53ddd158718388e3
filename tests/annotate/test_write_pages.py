"""The write task and the rating's better answer on the pages: the editor (from the draft), the preview, submitting,
refusing a blank answer, changing it on My work, the lead's task preview and the settings' kind list."""

from django.urls import reverse

from annotate.models import Annotation, Response, TaskKind
from tests.annotate.test_pages import HTMX, make_task, open_task, submit_url

DRAFT = 'Two. <script>alert("x")</script> **bold**'


def enable_writing(project):
    project.task_kinds = [*project.task_kinds, TaskKind.WRITE]
    project.save(update_fields=["task_kinds"])


def test_the_editor_starts_from_the_draft_escaped_as_written(client, annotator, project):
    enable_writing(project)
    make_task(project, TaskKind.WRITE, [DRAFT])
    client.force_login(annotator)
    page, _ = open_task(client, project)
    assert '<textarea id="written" name="text"' in page
    # The newline after the tag is the one HTML drops: the text itself follows, escaped.
    assert "\nTwo. &lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; **bold**</textarea>" in page
    assert "<script>alert" not in page
    assert "from a model draft" in page


def test_a_write_task_without_a_draft_starts_empty(client, annotator, project):
    enable_writing(project)
    make_task(project, TaskKind.WRITE, [])
    client.force_login(annotator)
    page, _ = open_task(client, project)
    assert 'name="text"' in page and "from a model draft" not in page
    assert "Nothing written yet." in page


def test_submitting_stores_the_text_and_a_blank_one_is_refused_with_what_was_sent(client, annotator, project):
    enable_writing(project)
    make_task(project, TaskKind.WRITE, [DRAFT])
    client.force_login(annotator)
    _, assignment = open_task(client, project)

    refused = client.post(submit_url(assignment), {"text": "   ", "comment": "kept"}, **HTMX)
    assert refused.status_code == 400
    assert "Write the answer: it is empty." in refused.content.decode()
    assert ">kept</textarea>" in refused.content.decode()
    assert not Annotation.objects.exists()

    done = client.post(submit_url(assignment), {"text": "Two is prime.\r\n"})
    assert done.status_code == 302
    assert client.post(submit_url(assignment), {"text": "Two is prime.\r\n"}).status_code == 302  # again: one
    written = Response.objects.get(source=Response.Source.HUMAN)
    assert (written.content, written.author) == ("Two is prime.\n", annotator)


def test_the_preview_is_the_responses_own_sanitised_rendering(client, annotator, project):
    client.force_login(annotator)
    url = reverse("write_preview", args=[project.slug])
    page = client.post(url, {"text": "**bold** <img src=x onerror=alert(1)> [x](javascript:alert(1))"}, **HTMX)
    html = page.content.decode()
    assert page.status_code == 200
    assert "<strong>bold</strong>" in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html and "<img" not in html
    assert 'href="javascript' not in html


def test_the_preview_is_for_members_only(client, outsider, project):
    client.force_login(outsider)
    assert client.post(reverse("write_preview", args=[project.slug]), {"text": "x"}).status_code == 404


def test_a_rating_offers_a_better_answer_and_keeps_it(client, annotator, project):
    make_task(project, TaskKind.RATING, ["Nine."])
    client.force_login(annotator)
    page, assignment = open_task(client, project)
    assert 'name="correction"' in page and "Write a better answer" in page

    client.post(submit_url(assignment), {"score": "1", "correction": "Two."})
    annotation = Annotation.objects.get()
    assert annotation.written_response.content == "Two."


def test_my_work_changes_a_written_answer_in_place(client, annotator, project):
    enable_writing(project)
    task = make_task(project, TaskKind.WRITE, [])
    task.required_annotations = 2
    task.save(update_fields=["required_annotations"])
    client.force_login(annotator)
    _, assignment = open_task(client, project)
    client.post(submit_url(assignment), {"text": "Two."})
    annotation = Annotation.objects.get()
    url = reverse("change_answer", args=[project.slug, annotation.pk])

    page = client.get(url).content.decode()
    assert "\nTwo.</textarea>" in page
    assert "Wrote 4 characters" in client.get(reverse("my_work", args=[project.slug])).content.decode()

    client.post(url, {"text": "Two, the even prime."})
    assert Response.objects.get(source=Response.Source.HUMAN).content == "Two, the even prime."


def test_the_lead_previews_a_write_task_and_enables_the_kind_in_the_settings(client, lead, project):
    enable_writing(project)
    task = make_task(project, TaskKind.WRITE, [DRAFT])
    client.force_login(lead)
    preview = client.get(reverse("task_preview", args=[project.slug, task.pk])).content.decode()
    assert "Written answer" in preview and 'id="written"' in preview
    settings_page = client.get(reverse("project_settings", args=[project.slug])).content.decode()
    assert 'value="write"' in settings_page
