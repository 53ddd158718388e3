"""Model text is untrusted: the markdown filter renders it inert, and the task page keeps htmx out of it."""

from html.parser import HTMLParser

import pytest
from django.template import Context, Template
from django.urls import reverse

from annotate.models import Prompt, Response, Task, TaskResponse
from annotate.templatetags.arbiter_markdown import ALLOWED_TAGS, _cleaner, render_markdown

PAYLOADS = [
    "<script>alert(document.cookie)</script>",
    "<img src=x onerror=alert(1)>",
    '<a href="javascript:alert(1)">click me</a>',
    "[click me](javascript:alert(1))",
    "[click me](JaVaScRiPt:alert(1))",
    "<javascript:alert(1)>",
    '<div hx-get="/logout/" hx-trigger="load">x</div>',
    '<button hx-post="/p/x/assignments/1/submit/" hx-vals=\'{"score": 1}\'>go</button>',
    '<iframe src="https://evil.example/"></iframe>',
    "<svg onload=alert(1)><circle r=1 /></svg>",
    '<p onclick="alert(1)" style="position:fixed">styled</p>',
    "<object data=x></object><embed src=x><form action=/logout/><input name=a></form>",
    "[data](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
]


class Elements(HTMLParser):
    """Every start tag in a fragment, with its attributes: what a browser would build from it."""

    def __init__(self, html: str):
        super().__init__()
        self.found: list[tuple[str, dict[str, str | None]]] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.found.append((tag, dict(attrs)))


def assert_inert(html: str) -> None:
    assert "<script" not in html.lower()
    for tag, attributes in Elements(html).found:
        assert tag in ALLOWED_TAGS, tag
        for name, value in attributes.items():
            assert not name.startswith("on"), (tag, name)
            assert not name.startswith("hx-") and not name.startswith("data-hx-"), (tag, name)
            if (tag, name) in {("ol", "start"), ("li", "value")}:
                assert value.isdecimal(), (tag, name, value)
                continue
            if (tag, name) == ("ol", "class"):
                assert value in {f"digits-{n}" for n in range(4, 10)}, value
                continue
            assert name in {"href", "rel"} and tag == "a", (tag, name)
            assert "javascript:" not in (value or "").lower(), (tag, name, value)


@pytest.mark.parametrize("payload", PAYLOADS)
def test_payload_renders_inert(payload):
    assert_inert(render_markdown(payload))


@pytest.mark.parametrize("payload", PAYLOADS)
def test_payload_inside_markdown_structure_renders_inert(payload):
    text = f"# Title {payload}\n\n> quoted {payload}\n\n- item {payload}\n\n| a |\n|---|\n| {payload} |\n"
    assert_inert(render_markdown(text))


def test_raw_html_shows_as_the_text_the_model_wrote():
    # Annotators judge what the model said, so its markup is shown, escaped, rather than dropped.
    assert render_markdown("<b>bold</b>") == "<p>&lt;b&gt;bold&lt;/b&gt;</p>\n"


def test_code_blocks_render_as_pre_code_with_their_content_escaped():
    html = render_markdown("```python\nif a < b:\n    print('<script>')\n```")

    assert html.startswith("<pre><code>")
    assert "if a &lt; b:" in html and "&lt;script&gt;" in html
    assert_inert(html)


def test_inline_code_and_indented_code():
    assert "<code>x &lt; y</code>" in render_markdown("Use `x < y`.")
    assert render_markdown("    indented\n").startswith("<pre><code>indented")


def test_a_plain_link_keeps_its_href_and_gets_rel():
    html = render_markdown('[docs](https://example.com/a?b=1 "title") and <mailto:someone@example.com>')

    assert '<a href="https://example.com/a?b=1" rel="noopener nofollow">docs</a>' in html
    assert '<a href="mailto:someone@example.com" rel="noopener nofollow">' in html
    assert "title=" not in html


def test_a_relative_link_loses_its_href():
    # A relative link would point at this site's own pages, which model text has no business linking to.
    assert "href" not in render_markdown("[log out](/logout/)")


def test_tables_emphasis_lists_and_strikethrough_survive():
    html = render_markdown("*em* **strong** ~~gone~~\n\n1. one\n2. two\n\n| a | b |\n|--:|---|\n| 1 | 2 |\n\n---")

    for tag in ["<em>", "<strong>", "<s>", "<ol>", "<li", "<table>", "<th>", "<td>", "<hr>"]:
        assert tag in html
    assert "style=" not in html


def test_an_ordered_list_shows_the_numbers_the_model_wrote():
    # The demo's answer "408. (17 × 20 = 340, …)" was shown as "1. (…)": nh3 dropped the list's start.
    assert (
        render_markdown("408. (17 × 20 = 340, …)")
        == '<ol start="408">\n<li value="408">(17 × 20 = 340, …)</li>\n</ol>\n'
    )
    # CommonMark counts on from the first number; the model's own numbers may skip or go down.
    html = render_markdown("3. three\n5. five\n4. four")
    assert [f'<li value="{n}">' in html for n in (3, 5, 4)] == [True, True, True]


def test_list_numbers_are_the_only_attributes_lists_keep():
    html = _cleaner.clean(
        '<ol start="2 onclick=x" type="a" class="digits-4"><li value="x" onclick="y">a</li>'
        '<li value="-3">b</li><li value="12" class="digits-4">c</li></ol><ol class="digits-10"></ol>'
    )

    assert html == '<ol class="digits-4"><li>a</li><li>b</li><li value="12">c</li></ol><ol></ol>'
    # Long numbers get room for their markers.
    assert render_markdown("1986. a year").startswith('<ol start="1986" class="digits-4">')


def test_stars_between_characters_stay_text():
    # CommonMark makes 2*3*4 "2<em>3</em>4": the multiplication would vanish.
    assert render_markdown("2*3*4, 2**10, x*y*z, $a^*$ and $b^*$, **bold**glued") == (
        "<p>2*3*4, 2**10, x*y*z, $a^*$ and $b^*$, **bold**glued</p>\n"
    )
    assert render_markdown("a *real* point, **bold** (*aside*)") == (
        "<p>a <em>real</em> point, <strong>bold</strong> (<em>aside</em>)</p>\n"
    )
    # Scripts written without spaces keep CommonMark's rule.
    assert render_markdown("**重要**です") == "<p><strong>重要</strong>です</p>\n"


def test_backslashes_and_entities_show_as_written():
    assert render_markdown("C:\\Users, \\*x\\*, \\(\\frac{1}{2}\\), a \\\\ b") == (
        "<p>C:\\Users, \\*x\\*, \\(\\frac{1}{2}\\), a \\\\ b</p>\n"
    )
    assert render_markdown("line \\\nnext") == "<p>line \\<br>\nnext</p>\n"
    assert render_markdown("&amp; &copy; &#65;") == "<p>&amp;amp; &amp;copy; &amp;#65;</p>\n"


def test_images_and_reference_definitions_keep_their_text():
    # nh3 drops <img> with its alt text; a reference definition vanishes from the output.
    assert render_markdown("![a chart](https://example.com/c.png)") == (
        '<p>!<a href="https://example.com/c.png" rel="noopener nofollow">a chart</a></p>\n'
    )
    assert render_markdown("See [1].\n\n[1]: https://example.com/paper") == (
        "<p>See [1].</p>\n<p>[1]: https://example.com/paper</p>\n"
    )


def test_lines_written_apart_stay_apart():
    assert render_markdown("Answer: 408\nReason: 17 × 24") == "<p>Answer: 408<br>\nReason: 17 × 24</p>\n"


def test_filter_marks_its_output_safe_and_escapes_nothing_twice():
    rendered = Template("{% load arbiter_markdown %}{{ text|markdown }}").render(Context({"text": "a & **b**"}))

    assert rendered == "<p>a &amp; <strong>b</strong></p>\n"


def test_filter_renders_nothing_for_none():
    assert Template("{% load arbiter_markdown %}{{ text|markdown }}").render(Context({"text": None})) == ""


@pytest.mark.django_db
def test_task_page_shows_hostile_prompt_and_response_inert_inside_hx_disable(client, annotator, project):
    hostile = "\n\n".join(PAYLOADS)
    prompt = Prompt.objects.create(
        project=project,
        external_id="hostile",
        messages=[{"role": "system", "content": hostile}, {"role": "user", "content": hostile}],
    )
    task = Task.objects.create(project=project, prompt=prompt, kind="pairwise")
    for position in range(2):
        response = Response.objects.create(prompt=prompt, content=f"{position} {hostile}")
        TaskResponse.objects.create(task=task, response=response, position=position)
    client.force_login(annotator)

    page = client.get(reverse("task_page", args=[project.slug])).content.decode()

    elements = Elements(page).found
    assert not {"img", "iframe", "svg", "object", "embed"} & {tag for tag, _ in elements}
    scripts = [attrs.get("src", "") for tag, attrs in elements if tag == "script"]
    assert "/static/annotate.js" in scripts and all(src.startswith("/static/") for src in scripts)
    assert not [(tag, name) for tag, attrs in elements for name in attrs if name.startswith("on")]
    # The only htmx attributes on the page are the site's own: two forms that post, and the disabled regions.
    assert sorted(attrs["hx-post"].rsplit("/", 2)[-2] for _, attrs in elements if "hx-post" in attrs) == [
        "skip",
        "submit",
    ]
    assert not [name for _, attrs in elements for name in attrs if name in {"hx-get", "hx-vals", "hx-trigger"}]
    # Four texts formatted, and the same four as written in the raw view.
    assert page.count("&lt;script&gt;alert(document.cookie)&lt;/script&gt;") == 8
    # Every rendered piece of model text sits in an hx-disable container.
    assert '<section class="prompt" aria-label="Prompt" hx-disable>' in page
    assert page.count('<div class="md" hx-disable>') == 5 == page.count('class="md"')  # 4 texts, the guidelines
    assert page.count('<div class="raw" hx-disable>') == 4 == page.count('class="raw"')
