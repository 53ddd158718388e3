"""Filters that show the Quality page's figures: `{{ share|percent }}` → "85 %", `{{ low|interval:high }}` →
"70–93 %", `{{ p|p_value }}` → "p = 0.03"."""

from django import template

register = template.Library()


@register.filter
def percent(value: float | None) -> str:
    """A share from 0 to 1 as a whole percentage; "–" for none."""
    return "–" if value is None else f"{round(100 * value)} %"


@register.filter
def interval(low: float | None, high: float | None) -> str:
    """A 95 % interval of a share, as whole percentages; "" for none."""
    return "" if low is None or high is None else f"{round(100 * low)}–{round(100 * high)} %"


@register.filter
def p_value(value: float | None) -> str:
    """A p-value with two significant digits, down to "p < 0.0001"; "" for none."""
    if value is None:
        return ""
    return "p < 0.0001" if value < 0.0001 else f"p = {value:.2g}"


@register.filter
def words(code: str) -> str:
    """A flag's code as words: "too_fast" → "too fast"."""
    return code.replace("_", " ")


@register.filter
def points(value: float | None) -> str:
    """A difference of two shares in signed percentage points: "+12 points", "−3 points"; "–" for none."""
    if value is None:
        return "–"
    n = round(100 * value)
    return f"{'+' if n > 0 else '−' if n < 0 else '±'}{abs(n)} point{'s' if abs(n) != 1 else ''}"
