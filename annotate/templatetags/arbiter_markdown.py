"""`{{ text|markdown }}`: markdown to HTML that is safe to show, for model text and guidelines alike.

Model output is untrusted: it may hold `<script>`, event handlers, `javascript:` links or `hx-*` attributes
aimed at the annotator's session. Two layers keep it inert. markdown-it renders with `html=False`, so raw
HTML in the text is escaped and shows as written (an annotator should see that a model emitted a script
tag); nh3 then keeps only an allowlist of tags and attributes, in case a renderer bug or a future option
lets markup through.
"""

import nh3
from django import template
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


def render_markdown(text: str) -> str:
    """Markdown (CommonMark, tables, strikethrough, no raw HTML) as sanitised HTML."""
    return _cleaner.clean(_markdown.render(text or ""))


@register.filter(name="markdown")
def markdown_filter(text: object) -> SafeString:
    return mark_safe(render_markdown(str(text) if text is not None else ""))  # sanitised by nh3 just above
