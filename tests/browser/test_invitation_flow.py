"""Getting people in, in Chromium: a lead makes an invitation link, a newcomer opens it in another browser, signs
up, lands in the project and annotates a task; the people pages are looked at on a desktop and on a phone."""

import re

import pytest
from django.core import mail
from playwright.sync_api import expect

from annotate.leads import project_leads_group
from annotate.models import Annotation, Invitation
from tests.browser.conftest import OUTPUT
from tests.browser.test_every_page_under_csp import PHONE, both_widths
from tests.browser.test_keyboard_annotation import log_in, make_task

pytestmark = pytest.mark.django_db(transaction=True)


def answered_with(page_log, status):
    """A page the server answered with an error status on purpose: Chromium logs it as a failed load, once."""
    logged = [error for error in page_log.errors if f"status of {status}" in error]
    assert len(logged) == 1, page_log.errors
    page_log.errors.remove(logged[0])


def test_invite_sign_up_and_annotate(request, browser, live_server, page, page_log, screenshot, lead, project):
    lead.groups.add(project_leads_group())
    task = make_task(project, "rating", 1, ["Canberra, since **1913**."])

    log_in(page, lead, "/")
    page.get_by_role("link", name="New project").click()
    expect(page.locator("h1")).to_have_text("New project")
    both_widths(page, screenshot, "new-project")
    page.goto(f"/p/{project.slug}/")
    page.get_by_role("link", name="Invitations").click()
    expect(page.locator("h1")).to_have_text("Invitations")
    page.get_by_label("Role").select_option("annotator")
    page.get_by_role("button", name="Make link").click()
    link = page.locator("#invite-link").inner_text()
    assert link.startswith(f"{live_server.url}/invite/")
    both_widths(page, screenshot, "invitations")

    # The newcomer: another browser context (no session shared with the lead's), on a phone.
    newcomer = browser.new_context(base_url=live_server.url, viewport=PHONE)
    other = newcomer.new_page()
    other.set_default_timeout(10_000)
    other.on("pageerror", page_log.on_page_error)
    other.on("console", page_log.on_console)
    shots = OUTPUT / request.node.name

    other.goto(link)
    expect(other.locator("h1")).to_have_text(f"Join {project.name}")
    other.screenshot(path=shots / "newcomer-1-join-phone.png", full_page=True)
    other.get_by_label("Username").fill("newcomer")
    other.get_by_label("Email address").fill("newcomer@example.com")
    other.locator("#id_password1").fill("short")
    other.locator("#id_password2").fill("short")
    other.get_by_role("button", name="Make my account and join").click()
    expect(other.locator(".errorlist")).to_contain_text("too short")  # Django's password validators
    answered_with(page_log, 400)
    other.screenshot(path=shots / "newcomer-2-refused-phone.png", full_page=True)
    other.locator("#id_password1").fill("a-long-unusual-passphrase")
    other.locator("#id_password2").fill("a-long-unusual-passphrase")
    other.get_by_role("button", name="Make my account and join").click()

    expect(other.locator("h1")).to_contain_text(project.name)
    expect(other.locator(".message.success")).to_have_text(f"Welcome to {project.name}.")
    other.screenshot(path=shots / "newcomer-3-project-phone.png", full_page=True)
    other.get_by_role("link", name="Start annotating").click()
    expect(other.locator(f'#task .response[data-response-id="{task.response_ids()[0]}"]')).to_be_visible()
    other.keyboard.press("4")
    other.keyboard.press("Enter")
    expect(other.locator("#progress-session")).to_have_attribute("value", "1")
    other.screenshot(path=shots / "newcomer-4-annotated-phone.png", full_page=True)

    assert Annotation.objects.get(task=task).annotator.username == "newcomer"
    assert Invitation.objects.get().use_count == 1
    page.reload()
    expect(page.locator("#invitations tbody tr")).to_contain_text("1 of 1")
    expect(page.locator("#invitations tbody tr")).to_contain_text("Has been used")

    # The link is spent; the newcomer, logged out, can reset a forgotten password.
    other.get_by_role("button", name="Log out").click()
    other.goto(link)
    expect(other.locator(".problem")).to_have_text("This invitation has been used.")
    answered_with(page_log, 410)
    other.screenshot(path=shots / "newcomer-5-spent-phone.png", full_page=True)
    other.goto("/login/")
    other.get_by_role("link", name="Forgot your password?").click()
    other.get_by_label("Email").fill("newcomer@example.com")
    other.screenshot(path=shots / "newcomer-6-reset-phone.png", full_page=True)
    other.get_by_role("button", name="Send the link").click()
    expect(other.locator("h1")).to_have_text("Check your email")
    other.screenshot(path=shots / "newcomer-7-sent-phone.png", full_page=True)
    newcomer.close()
    assert page_log.errors == []


def test_someone_logged_in_joins_with_their_account(page, screenshot, project, lead, outsider):
    _, token = Invitation.issue(project, by=lead, role="lead")
    log_in(page, outsider, "/")

    page.goto(f"/invite/{token}/")
    expect(page.get_by_role("button", name="Join as outsider")).to_be_visible()
    both_widths(page, screenshot, "join-logged-in")
    page.get_by_role("button", name="Join as outsider").click()

    expect(page.locator("h1")).to_contain_text(project.name)
    expect(page.locator("h1 .role")).to_have_text("Lead")
    expect(page.get_by_role("link", name="Invitations")).to_be_visible()  # a lead's tools, on the project page
    assert project.memberships.get(user=outsider).role == "lead"


def test_a_forgotten_password_is_reset_by_email(page, page_log, screenshot, annotator):
    annotator.email = "annotator@example.com"
    annotator.save()

    page.goto("/login/")
    page.get_by_role("link", name="Forgot your password?").click()
    page.get_by_label("Email").fill("annotator@example.com")
    page.get_by_role("button", name="Send the link").click()
    expect(page.locator("h1")).to_have_text("Check your email")
    both_widths(page, screenshot, "reset-sent")
    [message] = mail.outbox
    link = re.search(r"https?://\S+/password-reset/\S+/", message.body).group(0)

    page.goto(link)
    expect(page.locator("h1")).to_have_text("Set a new password")
    page.locator("#id_new_password1").fill("a-fresh-long-passphrase")
    page.locator("#id_new_password2").fill("a-fresh-long-passphrase")
    both_widths(page, screenshot, "reset-set")
    page.get_by_role("button", name="Set password").click()
    expect(page.locator("h1")).to_have_text("Password set")
    both_widths(page, screenshot, "reset-done")
    page.get_by_role("link", name="Log in").click()
    page.locator("#id_username").fill("annotator")
    page.locator("#id_password").fill("a-fresh-long-passphrase")
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("h1")).to_have_text("Your projects")
