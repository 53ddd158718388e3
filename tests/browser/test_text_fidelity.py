"""What a model wrote is what an annotator sees: tricky outputs on the task page, read back from Chromium.

Each case is a model output with its Markdown syntax marked ⟦like this⟧. Everything outside the marks is
what the model said, and must be visible, in order, in the rendered response (its innerText; whitespace aside,
but a line break stays a line break). The numbers of an ordered list are not in innerText: they are checked
as the list numbers Chromium draws (its accessibility tree), so a list numbered from 408 must show 408.
"""

import re
from dataclasses import dataclass

import pytest
from playwright.sync_api import expect

from annotate.models import Prompt, Response, Task, TaskResponse, TextFormat
from tests.browser.test_keyboard_annotation import log_in

pytestmark = pytest.mark.django_db(transaction=True)


@dataclass(frozen=True)
class Case:
    name: str
    marked: str
    numbers: tuple[str, ...] = ()  # the numbers Chromium must draw before list items, in order

    @property
    def source(self) -> str:
        """The text as the model wrote it."""
        return self.marked.replace("⟦", "").replace("⟧", "")

    @property
    def meaning(self) -> str:
        """What must be visible: the source without its Markdown syntax."""
        return re.sub("⟦.*?⟧", "", self.marked, flags=re.S)


PROMPT = "What is 17 × 24?\n\n2*3*4"
LONG_WORD = "Pneumonoultramicroscopicsilicovolcanoconiosis" * 8
LONG_URL = "https://example.com/" + "a1b2c3d4e5/" * 40

CORPUS = [
    Case("ordered list from 408", "⟦408.⟧ (17 × 20 = 340, 17 × 4 = 68, and 340 + 68 = 408.)", ("408. ",)),
    Case("numbered lines with gaps", "⟦3.⟧ Third\n⟦5.⟧ Fifth\n⟦10.⟧ Tenth", ("3. ", "5. ", "10. ")),
    Case("numbers with parentheses", "⟦2)⟧ two\n⟦1)⟧ one, back to one", ("2. ", "1. ")),
    Case("long list numbers", "⟦123456789.⟧ nine digits\n⟦99.⟧ two", ("123456789. ", "99. ")),
    Case("a year at a line start", "⟦1986.⟧ A great year.\n\n⟦1987.⟧ Another one.", ("1986. ", "1987. ")),
    Case("multiplication", "2*3*4 = 24, 2**10 = 1024, x*y*z and 2*x + 3*y = 7"),
    Case("emphasis that is meant", "A ⟦*⟧real⟦*⟧ point, ⟦**⟧bold⟦**⟧ (⟦*⟧aside⟦*⟧), **bold**glued and ⟦_⟧under⟦_⟧."),
    Case("underscores", "a_b_c, snake_case_name and x_1 + y_2"),
    Case("backslashes", "C:\\Users\\me\\file.txt, \\*not emphasis\\*, \\_x\\_, a \\\\ b, \\# not a heading"),
    Case("a backslash at a line end", "line one \\\nline two"),
    Case("markup as text", "Line<br>break, a<b>c, <i>x</i> and </p> and <!-- note -->"),
    Case("entities as text", "&amp; &lt;b&gt; &copy; &#65; &nbsp;"),
    Case("leading hash", "#1 priority\n\n⟦# ⟧Heading\n\n⟦### ⟧Third, # inside ⟦###⟧"),
    Case(
        "table",
        "⟦|⟧ op ⟦|⟧ result ⟦|⟧\n⟦|---|--:|⟧\n⟦|⟧ 2*3*4 ⟦|⟧ 24 ⟦|⟧\n⟦|⟧ a_b ⟦|⟧ ⟦\\⟧| pipe ⟦|⟧",
    ),
    Case(
        "a wide table",
        "⟦|⟧ " + " ⟦|⟧ ".join(f"column{n}" for n in range(12)) + " ⟦|⟧\n⟦|" + "---|" * 12 + "⟧\n"
        "⟦|⟧ " + " ⟦|⟧ ".join(f"value{n}" for n in range(12)) + " ⟦|⟧",
    ),
    Case(
        "latex",
        "$x_1 * y_2$, $a^*$ and $b^*$, \\(\\frac{1}{2}\\) and\n$$\\sum_{i=1}^{n} i = \\frac{n(n+1)}{2} \\\\ [x]$$",
    ),
    Case("indented code", "Code:\n\n    def f(x):\n        return 2*x  # *not* emphasis\n"),
    Case("fenced code", "⟦```python⟧\nprint('*hi*', a_b, \"<br>\")\n⟦```⟧"),
    Case("trailing spaces", "line one  \nline two   \nend    "),
    Case("blank lines first and spaces last", "\n\n  Starts after two blank lines; ends in spaces and a tab. \t"),
    Case("lines that belong apart", "Answer: 408\nReason: 17 × 24\nSure: yes"),
    Case("very long tokens", f"{LONG_WORD} and {LONG_URL}"),
    Case("right to left", "مرحبا بالعالم 123، كيف حالك؟\n\nשלום עולם (2*3) – ok\n\nMixed: English then عربي then 42."),
    Case("bullets and quotes", "⟦- ⟧apples\n⟦- ⟧pears\n\n⟦> ⟧quoted 2*3"),
    Case("a reference definition", "See [1] and [the paper][1].\n\n[1]: https://example.com/paper"),
    Case("an image", "!⟦[⟧a chart⟦](https://example.com/c.png)⟧ here"),
    Case("a link", "See ⟦[⟧the docs⟦](https://example.com/docs)⟧."),
]


def tokens(text: str) -> list[str]:
    """The visible characters to compare: no spaces or tabs, and any run of line breaks as one."""
    out: list[str] = []
    for char in text.strip():
        if char == "\n":
            if out and out[-1] != "\n":
                out.append("\n")
        elif not char.isspace():
            out.append(char)
    return out


def first_missing(needle: list[str], haystack: list[str]) -> int | None:
    """The index in `needle` of the first item not found, in order, in `haystack`; None if all are."""
    position = 0
    for index, item in enumerate(needle):
        try:
            position = haystack.index(item, position) + 1
        except ValueError:
            return index
    return None


def list_numbers(page, selector: str) -> list[str]:
    """The numbers Chromium draws before the list items inside an element, in order ("408. ")."""
    cdp = page.context.new_cdp_session(page)
    root = cdp.send("DOM.getDocument")["root"]["nodeId"]
    node = cdp.send("DOM.querySelector", {"nodeId": root, "selector": selector})["nodeId"]
    found = cdp.send("Accessibility.queryAXTree", {"nodeId": node, "role": "ListMarker"})["nodes"]
    cdp.detach()
    # Bullets are left out: which one a nested list gets depends on the page around it.
    return [n["name"]["value"] for n in found if any(char.isdigit() for char in n["name"]["value"])]


def problems(page, case: Case, selector: str) -> list[str]:
    """What the rendered element fails to show of the case: nothing when all is well."""
    found = []
    shown = page.locator(selector).inner_text()
    needle, haystack = tokens(case.meaning), tokens(shown)
    if (missing := first_missing(needle, haystack)) is not None:
        lost, before = "".join(needle[missing:])[:30], "".join(needle[:missing])[-30:]
        found.append(f"{case.name}: {lost!r} is not shown after {before!r}; shown: {shown[:200]!r}")
    if (numbers := list_numbers(page, selector)) != list(case.numbers):
        found.append(f"{case.name}: list numbers {numbers}, not {list(case.numbers)}")
    # Nothing sticks out of the response: long words wrap, tables and code scroll inside it.
    if not page.locator(selector).evaluate("e => e.scrollWidth <= e.clientWidth + 1"):
        found.append(f"{case.name}: wider than its response")
    return found


@pytest.fixture
def corpus_task(project):
    """One ranking task whose responses are the corpus, each mapped from its response id."""
    prompt = Prompt.objects.create(
        project=project, external_id="corpus", messages=[{"role": "user", "content": PROMPT}]
    )
    task = Task.objects.create(project=project, prompt=prompt, kind="ranking")
    cases = {}
    for position, case in enumerate(CORPUS):
        response = Response.objects.create(prompt=prompt, content=case.source)
        TaskResponse.objects.create(task=task, response=response, position=position)
        cases[response.pk] = case
    return cases


def test_corpus_is_well_formed():
    for case in CORPUS:
        assert case.marked.count("⟦") == case.marked.count("⟧"), case.name
        assert tokens(case.meaning), case.name


@pytest.mark.parametrize("width", [1280, 390])
def test_every_character_the_model_wrote_is_visible_in_order(page, screenshot, annotator, project, corpus_task, width):
    page.set_viewport_size({"width": width, "height": 900})
    log_in(page, annotator, f"/p/{project.slug}/annotate/")
    expect(page.locator("#task .response")).to_have_count(len(CORPUS))
    found = [
        problem
        for response_id, case in corpus_task.items()
        for problem in problems(page, case, f'#task .response[data-response-id="{response_id}"] .md')
    ]
    found += problems(page, Case("prompt", PROMPT), "#task .prompt .md")
    assert not found, "\n".join(found)
    screenshot(f"corpus-{width}")


def shown_as_written(page, corpus_task, within: str) -> list[str]:
    """The cases whose text `within` each response (and the prompt's) is not exactly the source, visibly."""
    wrong = []
    for response_id, case in [*corpus_task.items(), (None, Case("prompt", PROMPT))]:
        where = f'#task .response[data-response-id="{response_id}"]' if response_id else "#task .prompt"
        text = page.locator(f"{where} {within}")
        if not text.is_visible() or text.inner_text() != case.source:
            wrong.append(case.name)
    return wrong


@pytest.mark.parametrize("width", [1280, 390])
def test_the_raw_text_key_shows_every_text_exactly_as_written(page, screenshot, annotator, project, corpus_task, width):
    page.set_viewport_size({"width": width, "height": 900})
    log_in(page, annotator, f"/p/{project.slug}/annotate/")
    expect(page.locator("#task .response")).to_have_count(len(CORPUS))
    expect(page.locator("#task .raw").first).to_be_hidden()

    page.keyboard.press("r")

    expect(page.locator("#show-raw")).to_be_checked()
    expect(page.locator("#task .md").first).to_be_hidden()
    assert shown_as_written(page, corpus_task, ".raw pre") == []
    screenshot(f"raw-{width}")
    page.keyboard.press("r")
    expect(page.locator("#task .md").first).to_be_visible()
    expect(page.locator("#task .raw").first).to_be_hidden()
    # The keys of the task go on working around it: the focused response still moves.
    first = page.locator("#task .response").first.get_attribute("data-response-id")
    page.keyboard.press("Shift+ArrowDown")
    assert page.locator("#task .response").nth(1).get_attribute("data-response-id") == first


def test_a_plain_text_project_shows_every_text_exactly_as_written(page, screenshot, annotator, project, corpus_task):
    project.text_format = TextFormat.PLAIN
    project.save()
    log_in(page, annotator, f"/p/{project.slug}/annotate/")
    expect(page.locator("#task .response")).to_have_count(len(CORPUS))

    assert shown_as_written(page, corpus_task, ".md pre.plain") == []
    expect(page.locator("#show-raw")).to_have_count(0)
    screenshot("plain")
