"""Browser fixtures: Debian's Chromium driven by Playwright against pytest-django's live server.

Every test here gets a fresh browser, a page that records what a test must not let pass silently (JS
errors, alert/confirm/prompt dialogs, the requests it made), and a folder for screenshots under
tests/output/<test name>/ (git-ignored).
"""

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from django.db import connections
from playwright.sync_api import ConsoleMessage, Dialog, Error, Request, sync_playwright

CHROMIUM = Path(os.environ.get("ARBITER_CHROMIUM", "/usr/bin/chromium"))
# Headless, and quiet: without the background-networking flags Chromium dials Google services, and its
# refused connections fill the log.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
OUTPUT = Path(__file__).resolve().parent.parent / "output"


@pytest.fixture(autouse=True)
def _orm_beside_playwright(monkeypatch):
    # Playwright's sync API keeps an asyncio loop running in the test's thread, so Django refuses ORM calls
    # from the test (SynchronousOnlyOperation) though nothing here is async. Autouse, so it is set before
    # any fixture that writes rows after the browser started.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


@pytest.fixture
def browser():
    if not CHROMIUM.exists():
        reason = f"browser tests need Chromium at {CHROMIUM} (Debian: apt-get install chromium; .ci/run installs it)"
        # .ci/run installs it, so in CI a missing browser is a broken setup, not a reason to pass quietly.
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    # One browser per test: a session-wide one would keep Playwright's loop running into the other test
    # modules, where the ORM would then refuse to work.
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()
        # While the loop runs, Django keeps this thread's connections per asyncio context, apart from the
        # thread's own: close them here, or they stay open and PostgreSQL refuses to drop the test database.
        connections.close_all()


@dataclass
class PageLog:
    """What happened in the page besides what the test did."""

    errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    documents: list[str] = field(default_factory=list)

    def on_console(self, message: ConsoleMessage) -> None:
        # Chromium asks for /favicon.ico by itself; a 404 there is no fault of the page's. Any other failed
        # load (a missing script, a refused htmx request) is.
        if message.type == "error" and not message.location.get("url", "").endswith("/favicon.ico"):
            self.errors.append(f"console: {message.text} ({message.location.get('url')})")

    def on_page_error(self, error: Error) -> None:
        self.errors.append(f"uncaught: {error.message}")

    def on_dialog(self, dialog: Dialog) -> None:
        # A listener must answer the dialog, or the page hangs on it.
        self.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    def on_request(self, request: Request) -> None:
        self.requests.append(request.url)
        if request.is_navigation_request() and request.frame.parent_frame is None:
            self.documents.append(request.url)


@pytest.fixture
def page_log():
    return PageLog()


@pytest.fixture
def page(browser, live_server, page_log):
    """A page on the live server (relative URLs work) that fails the test on any JS error."""
    context = browser.new_context(base_url=live_server.url, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(10_000)
    page.on("console", page_log.on_console)
    page.on("pageerror", page_log.on_page_error)
    page.on("dialog", page_log.on_dialog)
    page.on("request", page_log.on_request)
    yield page
    context.close()
    if page_log.errors:
        pytest.fail("JavaScript errors in the page:\n" + "\n".join(page_log.errors), pytrace=False)


@pytest.fixture
def screenshot(request, page):
    """screenshot("rating") saves the page as tests/output/<test name>/<n>-rating.png (full_page=False: the view)."""
    folder = OUTPUT / request.node.name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    taken = []

    def take(name: str, *, full_page: bool = True) -> Path:
        taken.append(name)
        path = folder / f"{len(taken)}-{name}.png"
        page.screenshot(path=path, full_page=full_page)
        return path

    return take
