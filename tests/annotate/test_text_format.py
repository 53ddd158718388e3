"""A project shows its texts as Markdown or as plain text; a Markdown task page keeps each text as written too."""

import html
import re

import pytest
from django.urls import reverse

from annotate.models import Project, TextFormat
from tests.annotate.test_long_texts import TABLE, shown_plain, task_with

pytestmark = pytest.mark.django_db

PROMPT = "\nWhich is *better*?"  # a leading newline, which HTML drops after <pre> unless it is written twice
LISTED = "408. (17 × 20 = 340)\n\n2*3*4 &amp; \\(x\\)   "


def task_page(client, annotator, project) -> str:
    client.force_login(annotator)
    return client.get(reverse("task_page", args=[project.slug])).content.decode()


def raw_copies(page: str) -> list[str]:
    """The raw view's texts: what R shows."""
    found = re.findall(r'<div class="raw" hx-disable><pre class="plain">\n(.*?)</pre>', page, re.S)
    return [html.unescape(text) for text in found]


def test_a_plain_text_project_shows_every_text_as_written(client, annotator, project):
    project.text_format = TextFormat.PLAIN
    project.save()
    task_with(project, PROMPT, TABLE, LISTED)

    page = task_page(client, annotator, project)

    assert sorted(shown_plain(page)) == sorted([PROMPT, TABLE, LISTED])
    assert "<table>" not in page and "<em>better</em>" not in page and "<ol" not in page
    # Nothing to switch to, and no note about length: plain is the project's choice.
    assert 'id="show-raw"' not in page and 'data-key="r"' not in page and raw_copies(page) == []
    assert "longer than" not in page


def test_a_markdown_project_formats_and_keeps_each_text_as_written_for_the_raw_view(client, annotator, project):
    task_with(project, PROMPT, TABLE, LISTED)

    page = task_page(client, annotator, project)

    assert "<table>" in page and "<em>better</em>" in page and '<ol start="408">' in page
    assert sorted(raw_copies(page)) == sorted([PROMPT, TABLE, LISTED])
    assert 'id="show-raw"' in page and '<li data-key="r">' in page


def test_the_guidelines_stay_markdown_in_a_plain_text_project(client, annotator, project):
    project.text_format = TextFormat.PLAIN
    project.guidelines = "Prefer the **helpful** answer."
    project.save()
    task_with(project, "Which?", "A", "B")

    page = task_page(client, annotator, project)

    assert "<strong>helpful</strong>" in page


def test_the_api_tells_a_client_how_to_show_texts(client, annotator, project):
    project.text_format = TextFormat.PLAIN
    project.save()
    client.force_login(annotator)

    body = client.get(f"/api/v1/projects/{project.slug}/").json()

    assert body["text_format"] == "plain"
    assert Project._meta.get_field("text_format").default == "markdown"
