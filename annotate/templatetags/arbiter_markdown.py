"""`{{ text|markdown }}`: markdown to HTML that is safe to show, for model text and guidelines alike.

Model output is untrusted: it may hold `<script>`, event handlers, `javascript:` links or `hx-*` attributes
aimed at the annotator's session. Two layers keep it inert. markdown-it renders with `html=False`, so raw
HTML in the text is escaped and shows as written (an annotator should see that a model emitted a script
tag); nh3 then keeps only an allowlist of tags and attributes, in case a renderer bug or a future option
lets markup through.

Rendering is pure Python and linear in the text, but slow on the worst input: up to ~13 µs of CPU a character
(list items, a table of short rows), so a 2 MB response would take up to half a minute. Text longer than
ARBITER_MARKDOWN_MAX_CHARS is therefore shown plain, every character as written, and a task page formats its
texts only when together they fit in that limit (`formats`), which bounds what a page can cost.
"""

import nh3
from django import template
from django.conf import settings
from django.utils.html import escape, format_html
from django.utils.safestring import SafeString, mark_safe
from markdown_it import MarkdownIt

register = template.Library()

_markdown = MarkdownIt("commonmark", {"html": False}).enable(["table", "strikethrough"])

ALLOWED_TAGS = {
    *("p", "br", "pre", "code", "em", "strong", "ul", "ol", "li", "blockquote", "hr", "a"),
    *("h1", "h2", "h3", "h4", "h5", "h6"),
    *("table", "thead", "tbody", "tr", "th", "td"),
    # markdown-it writes ~~text~~ as <s>; <del> is the same thing from other renderers.
    *("del", "s"),
}
LINK_SCHEMES = ("http:", "https:", "mailto:")


def _only_absolute_hrefs(tag: str, attribute: str, value: str) -> str | None:
    # nh3 also keeps generic attributes (title, lang) whatever `attributes` says, and lets relative URLs
    # through; a relative link in model text could point at this site's own pages. So what survives is an
    # absolute http(s) or mailto href, and the rel that nh3 itself sets on links (link_rel below).
    if tag != "a":
        return None
    if attribute == "href":
        return value if value.strip().lower().startswith(LINK_SCHEMES) else None
    return value if attribute == "rel" else None


_cleaner = nh3.Cleaner(
    tags=ALLOWED_TAGS,
    clean_content_tags={"script", "style"},
    attributes={"a": {"href"}},
    attribute_filter=_only_absolute_hrefs,
    url_schemes={"http", "https", "mailto"},
    link_rel="noopener nofollow",
)


def formats(*texts: str) -> bool:
    """Whether texts shown together are short enough to format: at most ARBITER_MARKDOWN_MAX_CHARS in all."""
    return sum(len(text) for text in texts) <= settings.ARBITER_MARKDOWN_MAX_CHARS


def plain_text(text: str) -> str:
    """The text as written, escaped, in a <pre> that wraps long lines: nothing is parsed, nothing is hidden."""
    return f'<pre class="plain">{escape(text)}</pre>'


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
