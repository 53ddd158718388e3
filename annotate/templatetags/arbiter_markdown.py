r"""`{{ text|markdown }}`: markdown to HTML that is safe to show, for model text and guidelines alike.

Model output is untrusted: it may hold `<script>`, event handlers, `javascript:` links or `hx-*` attributes
aimed at the annotator's session. Two layers keep it inert. markdown-it renders with `html=False`, so raw
HTML in the text is escaped and shows as written (an annotator should see that a model emitted a script
tag); nh3 then keeps only an allowlist of tags and attributes, in case a renderer bug or a future option
lets markup through.

Rendering is pure Python and linear in the text, but slow on the worst input: up to ~13 µs of CPU a character
(list items, a table of short rows), so a 2 MB response would take up to half a minute. Text longer than
ARBITER_MARKDOWN_MAX_CHARS is therefore shown plain, every character as written, and a task page formats its
texts only when together they fit in that limit (`formats`), which bounds what a page can cost.

Formatting must never change what the text says, so the CommonMark that markdown-it parses is changed where
it would drop or alter a character that is not plainly syntax (tests/browser/test_text_fidelity.py reads each
case back from Chromium):

- an ordered list shows the numbers the model wrote (`408.` stays 408, `3.` then `5.` stay 3 and 5: each item
  gets its `value`), not a count from 1;
- a `*` run between two visible ASCII characters that could both open and close emphasis (`2*3*4`, `2**10`,
  `$a^*$`) is text: CommonMark already treats an intraword `_` so;
- a backslash escape shows its backslash (`C:\Users`, `\(x\)`), and a backslash at a line end stays;
- entities (`&amp;`) show as written, images as `!` and a link, reference definitions as the lines they are;
- a line break is a line break (`breaks`), so lines the model wrote apart are not run together.

What counts as syntax, and may disappear into the formatting: list markers and their delimiter (the number
stays as the list's), heading `#`s, emphasis markers that pair up, backticks and code fences, table pipes and
their delimiter row, `>` of a quote, link brackets and destinations. The task page's raw view shows the rest.
"""

import re

import nh3
from django import template
from django.conf import settings
from django.utils.html import escape, format_html
from django.utils.safestring import SafeString, mark_safe
from markdown_it import MarkdownIt
from markdown_it.rules_core import StateCore
from markdown_it.rules_inline import StateInline
from markdown_it.rules_inline.emphasis import tokenize as emphasis
from markdown_it.rules_inline.escape import escape as backslash_escape
from markdown_it.token import Token

from annotate.models import TextFormat

register = template.Library()


def _literal_intraword_stars(state: StateInline, silent: bool) -> bool:
    """Emphasis, except that an intraword `*` run between two visible ASCII characters is text (`2*3*4`)."""
    start = state.pos
    if silent or state.src[start] != "*":
        return emphasis(state, silent)
    end = start
    while end < state.posMax and state.src[end] == "*":
        end += 1
    before = state.src[start - 1] if start > 0 else " "
    after = state.src[end] if end < state.posMax else " "
    scanned = state.scanDelims(start, True)
    # Both opening and closing is CommonMark's intraword case; other scripts (CJK) keep it, as they have no spaces.
    if scanned.can_open and scanned.can_close and "!" <= before <= "~" and "!" <= after <= "~":
        state.pending += state.src[start:end]
        state.pos = end
        return True
    return emphasis(state, silent)


def _escape_keeping_backslash(state: StateInline, silent: bool) -> bool:
    """Backslash escapes that show their backslash: the escaped character is text, and so is the backslash."""
    if state.src.startswith("\\\n", state.pos):
        return False  # a backslash at a line end stays text, and `breaks` still breaks the line
    found = backslash_escape(state, silent)
    if found and not silent:
        state.tokens[-1].content = state.tokens[-1].markup
    return found


def _written_list_numbers(state: StateCore) -> None:
    # CommonMark numbers a list from its first item on; the model's own numbers may skip or go down. A list with
    # long numbers (a year, 123456789.) is marked, so that CSS gives its markers room rather than clip them.
    lists: list[tuple[Token, list[int]]] = []
    for token in state.tokens:
        if token.type == "ordered_list_open":
            lists.append((token, []))
        elif token.type == "list_item_open" and token.info.isdecimal():
            token.attrSet("value", str(int(token.info)))
            lists[-1][1].append(len(str(int(token.info))))
        elif token.type == "ordered_list_close":
            opened, digits = lists.pop()
            if max(digits, default=0) > 3:
                opened.attrSet("class", f"digits-{max(digits)}")


_markdown = (
    MarkdownIt("commonmark", {"html": False, "breaks": True})
    .enable(["table", "strikethrough"])
    .disable(["entity", "image", "reference"])
)
_markdown.inline.ruler.at("emphasis", _literal_intraword_stars)
_markdown.inline.ruler.at("escape", _escape_keeping_backslash)
_markdown.core.ruler.push("written_list_numbers", _written_list_numbers)

ALLOWED_TAGS = {
    *("p", "br", "pre", "code", "em", "strong", "ul", "ol", "li", "blockquote", "hr", "a"),
    *("h1", "h2", "h3", "h4", "h5", "h6"),
    *("table", "thead", "tbody", "tr", "th", "td"),
    # markdown-it writes ~~text~~ as <s>; <del> is the same thing from other renderers.
    *("del", "s"),
}
LINK_SCHEMES = ("http:", "https:", "mailto:")


LIST_NUMBER = re.compile(r"[0-9]{1,9}")  # what CommonMark allows a list number
LIST_DIGITS = re.compile(r"digits-[4-9]")


def _only_safe_attributes(tag: str, attribute: str, value: str) -> str | None:
    # nh3 also keeps generic attributes (title, lang) whatever `attributes` says, and lets relative URLs
    # through; a relative link in model text could point at this site's own pages. So what survives is an
    # absolute http(s) or mailto href, the rel that nh3 itself sets on links (link_rel below), and the numbers
    # of an ordered list with the class that makes room for long ones.
    if (tag, attribute) in {("ol", "start"), ("li", "value")}:
        return value if LIST_NUMBER.fullmatch(value) else None
    if (tag, attribute) == ("ol", "class"):
        return value if LIST_DIGITS.fullmatch(value) else None
    if tag != "a":
        return None
    if attribute == "href":
        return value if value.strip().lower().startswith(LINK_SCHEMES) else None
    return value if attribute == "rel" else None


_cleaner = nh3.Cleaner(
    tags=ALLOWED_TAGS,
    clean_content_tags={"script", "style"},
    attributes={"a": {"href"}, "ol": {"start"}, "li": {"value"}},
    allowed_classes={"ol": {f"digits-{n}" for n in range(4, 10)}},  # and the filter above
    attribute_filter=_only_safe_attributes,
    url_schemes={"http", "https", "mailto"},
    link_rel="noopener nofollow",
)


def formats(*texts: str, text_format: str = TextFormat.MARKDOWN) -> bool:
    """Whether texts shown together are formatted: Markdown (a project may choose plain text), and at most
    ARBITER_MARKDOWN_MAX_CHARS in all."""
    if text_format != TextFormat.MARKDOWN:
        return False
    return sum(len(text) for text in texts) <= settings.ARBITER_MARKDOWN_MAX_CHARS


def plain_text(text: str) -> str:
    """The text as written, escaped, in a <pre> that wraps long lines: nothing is parsed, nothing is hidden."""
    # HTML drops a newline right after <pre>: this one, so that a text's own first newline stays.
    return f'<pre class="plain">\n{escape(text)}</pre>'


def render_markdown(text: str) -> str:
    """Markdown (CommonMark, tables, strikethrough, no raw HTML) as sanitised HTML; too long a text plain."""
    text = text or ""
    if not formats(text):
        note = format_html(
            '<p class="plain-note">Shown as plain text: {} characters, more than the {} that are formatted.</p>',
            f"{len(text):,}",
            f"{settings.ARBITER_MARKDOWN_MAX_CHARS:,}",
        )
        return note + plain_text(text)
    return _cleaner.clean(_markdown.render(text))


@register.filter(name="markdown")
def markdown_filter(text: object, formatted: bool = True) -> SafeString:
    """`{{ text|markdown }}`, or `{{ text|markdown:formatted }}` where the page decided for all its texts at once."""
    text = str(text) if text is not None else ""
    # Sanitised by nh3, or escaped whole.
    return mark_safe(render_markdown(text) if formatted else plain_text(text))
