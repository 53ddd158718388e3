"""Template source rules that Django does not enforce itself. No database."""

from pathlib import Path

TEMPLATES = Path(__file__).resolve().parents[1] / "templates"


def test_one_line_comments_close_on_their_line():
    # Django's {# … #} ends at the line's end: one spread over two lines is shown to the reader as text.
    unclosed = [
        f"{path.relative_to(TEMPLATES)}:{number}"
        for path in sorted(TEMPLATES.rglob("*.html"))
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if "{#" in line and "#}" not in line.split("{#", 1)[1]
    ]
    assert unclosed == [], "use {% comment %} for comments over several lines"
