"""axe-core in the browser tests: a page must have no serious or critical accessibility violation.

axe-playwright-python bundles axe-core's script, so nothing is fetched at test time; it runs the script with
`page.evaluate`, which the Content-Security-Policy does not apply to (the pages allow no inline script).
"""

from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Page

AXE = Axe()
SERIOUS = {"serious", "critical"}
# No preloading: axe would fetch the page's stylesheets and add them back as inline <style>, which the policy
# refuses (the walk in test_every_page_under_csp.py would take that for the page's fault). Only the
# css-orientation-lock rule needs them.
OPTIONS = {"resultTypes": ["violations"], "preload": False}


def where(node: dict) -> str:
    """The element and axe's last word on it ("Element has insufficient color contrast of 4.43 ...")."""
    return f"    {node['target']}: {node['failureSummary'].splitlines()[-1].strip()}"


def assert_no_serious_axe_violations(page: Page, name: str, *, exclude: tuple[str, ...] = ()) -> None:
    """Run axe-core on the page as it stands; fail naming each serious or critical rule and where it broke.

    exclude: CSS selectors of parts that are not ours to fix (say why where you pass them)."""
    context = {"include": [["html"]], "exclude": [[selector] for selector in exclude]} if exclude else None
    results = AXE.run(page, context=context, options=OPTIONS)
    found = [
        f"{rule['id']} ({rule['impact']}): {rule['help']}\n" + "\n".join(where(node) for node in rule["nodes"][:5])
        for rule in results.response["violations"]
        if rule["impact"] in SERIOUS
    ]
    assert not found, f"axe on {name} ({page.url}):\n" + "\n".join(found)
