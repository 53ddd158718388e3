"""Text too long to format is shown plain, every character as written, so that no page takes seconds to render.

How long formatting takes is in BENCHMARKS.md ("Rendering model text"); these tests check the shape of what is
shown, which is what decides the cost: a text shown plain never went through the Markdown parser.
"""

import html
import re

import pytest
from django.urls import reverse

from annotate.models import Prompt, Response, Task, TaskResponse
from annotate.templatetags.arbiter_markdown import render_markdown
from tests.annotate.test_sanitising import PAYLOADS, Elements

TABLE = "| a | b |\n|---|---|\n" + "| **1** | `2` |\n" * 5
LIMIT = 500


@pytest.fixture(autouse=True)
def _small_limit(settings):
    settings.ARBITER_MARKDOWN_MAX_CHARS = LIMIT


def shown_plain(fragment: str) -> list[str]:
    """The texts of the fragment's <pre class="plain"> blocks, unescaped: what the annotator reads.

    Not the raw view's copies (hidden until asked for), and less the newline that HTML drops after <pre>."""
    found = re.findall(r'(?<!<div class="raw" hx-disable>)<pre class="plain">\n?(.*?)</pre>', fragment, re.S)
    return [html.unescape(text) for text in found]


def test_a_text_over_the_limit_is_shown_plain_as_written_with_a_note():
    text = (TABLE + "\n" + "\n\n".join(PAYLOADS) + "\n\t  trailing  \n") * 3
    assert len(text) > LIMIT

    shown = render_markdown(text)

    assert shown_plain(shown) == [text]
    assert [tag for tag, _ in Elements(shown).found] == ["p", "pre"]  # no table, no emphasis, nothing of the payloads
    assert f"{len(text):,} characters, more than the {LIMIT} that are formatted" in shown


def test_a_text_at_the_limit_is_formatted():
    text = TABLE.ljust(LIMIT, "x")

    shown = render_markdown(text)

    assert "<table>" in shown and "<strong>1</strong>" in shown and not shown_plain(shown)


def task_with(project, prompt_text, *texts):
    prompt = Prompt.objects.create(
        project=project, external_id="long", messages=[{"role": "user", "content": prompt_text}]
    )
    task = Task.objects.create(project=project, prompt=prompt, kind="pairwise" if len(texts) == 2 else "ranking")
    for position, text in enumerate(texts):
        TaskResponse.objects.create(
            task=task, response=Response.objects.create(prompt=prompt, content=text), position=position
        )
    return task


@pytest.mark.django_db
class TestTaskPage:
    def page(self, client, annotator, project):
        client.force_login(annotator)
        return client.get(reverse("task_page", args=[project.slug])).content.decode()

    def test_one_long_response_shows_the_whole_task_plain(self, client, annotator, project):
        # Formatted A beside plain B would sway the comparison: all of the task's texts go plain together.
        long = "**B**\n\n" + "word " * 120
        task_with(project, "Which is *better*?", TABLE, long)

        page = self.page(client, annotator, project)

        assert sorted(shown_plain(page)) == sorted(["Which is *better*?", TABLE, long])
        assert "shown as plain text, exactly as written" in page
        assert "<table>" not in page and "<strong>B</strong>" not in page

    def test_texts_over_the_limit_only_together_are_plain_too(self, client, annotator, project):
        third = LIMIT // 3
        task_with(project, "Rank them.", "a" * third, "b" * third, "c" * third)

        assert len(shown_plain(self.page(client, annotator, project))) == 4

    def test_a_task_within_the_limit_is_formatted(self, client, annotator, project):
        task_with(project, "Which is *better*?", TABLE, "**B**")

        page = self.page(client, annotator, project)

        assert not shown_plain(page) and "plain text" not in page
        assert "<em>better</em>" in page and "<table>" in page and "<strong>B</strong>" in page


def test_a_negative_limit_is_refused_naming_the_variable(tmp_path):
    from tests.test_settings import manage

    env = {"DATABASE_URL": f"sqlite:///{tmp_path}/a.sqlite3", "ARBITER_VAR_DIR": str(tmp_path)}
    result = manage("check", env={**env, "ARBITER_MARKDOWN_MAX_CHARS": "-1"})

    assert result.returncode != 0 and "ARBITER_MARKDOWN_MAX_CHARS='-1'" in result.stderr
