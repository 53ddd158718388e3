"""An annotator logs in and works through rating, pairwise and ranking tasks with the keyboard alone.

Nothing is clicked: keys go to whatever has focus, as they would for a person, and what counts is what the
database holds afterwards. Keys are pressed as a US keyboard sends them (Shift+Digit1 is "!", not "1").
"""

from urllib.parse import urlsplit

import pytest
from playwright.sync_api import expect

from annotate import models
from annotate.models import Annotation, Assignment, Prompt, Response, Task, TaskResponse
from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db(transaction=True)

XSS_PAYLOADS = [
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(2)>",
    "[click](javascript:alert(3))",
    '<a hx-get="/admin/" hx-trigger="load">x</a>',
    "<svg onload=alert(4)>",
    '<iframe src="javascript:alert(5)">',
]

# Anything in a response that could run code or make a request: elements that load or execute, event
# handlers, htmx attributes (htmx processes what it swaps in) and script URLs. hx-disable is the page's own
# guard, which turns htmx off inside the response.
ACTIVE_CONTENT = """() => [...document.querySelectorAll('.response')].flatMap(r => [r, ...r.querySelectorAll('*')])
    .filter(e => ['SCRIPT', 'IMG', 'SVG', 'IFRAME', 'OBJECT', 'EMBED'].includes(e.tagName.toUpperCase())
        || [...e.attributes].some(a => /^(on|hx-|data-hx-)/i.test(a.name) && !/^(data-)?hx-disable$/i.test(a.name)
            || /^\\s*javascript:/i.test(a.value)))
    .map(e => e.outerHTML)"""


def make_task(project, kind, priority, texts, prompt_text="What is the capital of Australia?"):
    prompt = Prompt.objects.create(
        project=project, external_id=f"{kind}-{priority}", messages=[{"role": "user", "content": prompt_text}]
    )
    task = Task.objects.create(project=project, prompt=prompt, kind=kind, priority=priority)
    for position, text in enumerate(texts):
        TaskResponse.objects.create(
            task=task, response=Response.objects.create(prompt=prompt, content=text), position=position
        )
    return task


def log_in(page, user, next_url):
    page.goto(f"/login/?next={next_url}")
    # Django's login form puts the focus in the username field itself.
    expect(page.locator("#id_username")).to_be_focused()
    page.keyboard.type(user.username)
    page.keyboard.press("Tab")
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Enter")
    page.wait_for_url(lambda url: urlsplit(url).path == next_url)


def showing(page, task):
    """Wait until the page shows `task` (after the first load or an htmx swap); return its shown order."""
    for response_id in task.response_ids():
        expect(page.locator(f'#task .response[data-response-id="{response_id}"]')).to_be_visible()
    shown_order = Assignment.objects.get(task=task).shown_order
    assert displayed_ids(page) == shown_order, "the page shows the responses in another order than it recorded"
    return shown_order


def displayed_ids(page):
    """The response ids in the order the page shows them now."""
    return page.locator("#task .response").evaluate_all("rs => rs.map(r => Number(r.dataset.responseId))")


@pytest.fixture
def shown_reversed(monkeypatch):
    """Leases show responses in reverse task order, so the displayed A is never the task's position 0."""
    # With a random order, a page that forgot to map displayed A/B back to positions passes half the time.
    monkeypatch.setattr(models.random, "shuffle", lambda ids: ids.reverse())


@pytest.fixture
def queue(project):
    """One task of each kind; priorities queue them rating, pairwise, ranking."""
    return {
        "rating": make_task(project, "rating", 3, ["Canberra, since 1913."]),
        "pairwise": make_task(project, "pairwise", 2, ["Canberra.", "Sydney, the largest city."]),
        "ranking": make_task(project, "ranking", 1, ["Canberra.", "Sydney.", "Melbourne, until 1927."]),
    }


def test_annotator_completes_rating_pairwise_and_ranking_with_keys_only(
    page, page_log, screenshot, annotator, project, queue, shown_reversed
):
    task_url = f"/p/{project.slug}/annotate/"
    page.goto(f"/login/?next={task_url}")
    screenshot("login")
    log_in(page, annotator, task_url)
    # Survives only if every later task is swapped in without loading a new document.
    page.evaluate("window.__marker = 1")
    documents_after_login = len(page_log.documents)

    # Rating: a score changed once, two labels (one toggled on and off again), a comment holding digits.
    showing(page, queue["rating"])
    expect(page.locator("#progress-project")).to_have_attribute("max", "3")
    page.keyboard.press("g")
    expect(page.locator("dialog#guidelines")).to_have_attribute("open", "")
    page.keyboard.press("Escape")
    expect(page.locator("dialog#guidelines")).not_to_have_attribute("open", "")
    for key in ["2", "4", "Shift+Digit1", "Shift+Digit3", "Shift+Digit2", "Shift+Digit2"]:
        page.keyboard.press(key)
    page.keyboard.press("c")
    page.keyboard.type("Off by 1 year, see 3 sources.")
    page.keyboard.press("Escape")
    screenshot("rating")
    page.keyboard.press("Enter")

    # Pairwise: B (as displayed) much better, after first leaning to A; both bad.
    pair_shown = showing(page, queue["pairwise"])
    expect(page.locator("#progress-session")).to_have_attribute("value", "1")
    for key in ["ArrowLeft", "Shift+ArrowRight", "x"]:
        page.keyboard.press(key)
    screenshot("pairwise")
    page.keyboard.press("Enter")

    # Ranking: focus starts on the first response shown. Move it to the bottom, bring the last shown to the
    # top, then tie the bottom one with the one above: [[third], [second, first]].
    first, second, third = showing(page, queue["ranking"])
    expect(page.locator("#progress-session")).to_have_attribute("value", "2")
    expect(page.locator(f'.response[data-response-id="{first}"]')).to_be_focused()
    keys = ["Shift+ArrowDown", "Shift+ArrowDown", "k", "Shift+ArrowUp", "ArrowDown", "j", "=", "ArrowUp"]
    for key in keys:
        page.keyboard.press(key)
    assert displayed_ids(page) == [third, second, first]
    screenshot("ranking")
    page.keyboard.press("Enter")

    expect(page.locator("#progress-session")).to_have_attribute("value", "3")
    # The project's bar counts the task the last submit completed (its counter moved in that submit).
    expect(page.locator("#progress-project")).to_have_attribute("value", "3")
    expect(page.locator("#task .response")).to_have_count(0)
    expect(page.locator("form#answer")).to_have_count(0)
    screenshot("done")

    assert page.evaluate("window.__marker") == 1
    assert len(page_log.documents) == documents_after_login, page_log.documents
    assert page_log.dialogs == []

    answers = {a.task.kind: a for a in Annotation.objects.select_related("task").filter(annotator=annotator)}
    assert sorted(answers) == ["pairwise", "ranking", "rating"]
    assert Annotation.objects.count() == 3
    rating = answers["rating"]
    assert (rating.score, rating.labels) == (4, ["factual error", "off-topic"])
    assert rating.comment == "Off by 1 year, see 3 sources."
    pairwise = answers["pairwise"]
    # The displayed B is shown_order[1]; the stored choice names its position in the task (here 0, "a").
    assert pairwise.choice == "ab"[queue["pairwise"].response_ids().index(pair_shown[1])] == "a"
    assert (pairwise.strength, pairwise.both_bad, pairwise.comment) == (2, True, "")
    assert answers["ranking"].ranking == [[third], sorted([first, second])]
    assert set(Assignment.objects.values_list("status", flat=True)) == {Assignment.Status.SUBMITTED}


def test_markup_in_model_text_stays_text(page, page_log, screenshot, annotator, project):
    payload = "\n\n".join(XSS_PAYLOADS)
    rating = make_task(project, "rating", 2, [payload])
    pairwise = make_task(project, "pairwise", 1, [payload, "Canberra."])
    task_url = f"/p/{project.slug}/annotate/"
    log_in(page, annotator, task_url)

    def assert_inert():
        # When all is well there is nothing to wait for: give a load-triggered htmx request, a broken
        # image's onerror or a script a moment to show itself.
        page.wait_for_timeout(500)
        assert page.evaluate(ACTIVE_CONTENT) == []
        assert page_log.dialogs == []
        assert [url for url in page_log.requests if "/admin/" in url] == []

    # The first task arrives with the page, the second through an htmx swap, which processes new markup.
    showing(page, rating)
    assert_inert()
    # Escaped, not dropped: the annotator sees what the model wrote.
    for payload_line in XSS_PAYLOADS:
        expect(page.locator("#task .response").first).to_contain_text(payload_line)
    screenshot("rating")
    for key in ["g", "Escape", "3", "c", "Escape", "Enter"]:
        page.keyboard.press(key)
    showing(page, pairwise)
    assert_inert()
    screenshot("pairwise")
    for key in ["t", "x", "Enter"]:
        page.keyboard.press(key)
    expect(page.locator("#task .response")).to_have_count(0)
    assert page_log.dialogs == []
    assert [url for url in page_log.requests if "/admin/" in url] == []


def test_a_number_moves_a_response_to_that_rank_and_only_equals_ties(page, annotator, project):
    # The annotator once pressed 3 on the top response and got ranks 2/3/3/4: a tie they never asked for.
    task = make_task(project, "ranking", 1, ["Canberra.", "Sydney.", "Melbourne.", "Perth."])
    log_in(page, annotator, f"/p/{project.slug}/annotate/")
    a, b, c, d = showing(page, task)
    expect(page.locator(f'.response[data-response-id="{a}"]')).to_be_focused()

    def after(keys, order, ranks):
        for key in keys:
            page.keyboard.press(key)
        assert displayed_ids(page) == order
        shown_ranks = page.locator("#task .response select").evaluate_all("ss => ss.map(s => s.value)")
        assert shown_ranks == ranks

    after(["4"], [b, c, d, a], ["1", "2", "3", "4"])  # unranked to start with: all ranked, no tie
    after(["k", "1"], [d, b, c, a], ["1", "2", "3", "4"])
    after(["3"], [b, c, d, a], ["1", "2", "3", "4"])  # the top one to 3: the two below move up
    after(["="], [b, c, d, a], ["1", "2", "2", "4"])  # = ties it with the one above
    after(["j", "2"], [b, a, c, d], ["1", "2", "3", "3"])  # the tie moves down whole
    # Rank 3 is inside the tie: a moving down goes past it rather than split it or join it.
    after(["3"], [b, c, d, a], ["1", "2", "2", "4"])
    page.keyboard.press("Enter")
    expect(page.locator("#task .response")).to_have_count(0)

    assert Annotation.objects.get(task=task).ranking == [[b], sorted([c, d]), [a]]


@pytest.mark.parametrize(
    ("kind", "texts", "keys"), [("rating", ["Canberra."], "1–5"), ("ranking", ["A", "B", "C"], "1–3")]
)
def test_an_incomplete_answer_names_the_keys_this_task_has(page, annotator, project, kind, texts, keys):
    make_task(project, kind, 1, texts)
    log_in(page, annotator, f"/p/{project.slug}/annotate/")
    expect(page.locator("#task .response").first).to_be_visible()

    page.keyboard.press("Enter")

    expect(page.locator("#answer-problem")).to_contain_text(f"keys {keys}")
    expect(page.locator("#legend")).to_contain_text(keys)
    assert Annotation.objects.count() == 0
