"""Filters that show the Quality page's figures: `{{ share|percent }}` → "85 %", `{{ p|p_value }}` → "p = 0.03"."""

from django import template

register = template.Library()


@register.filter
def percent(value: float | None) -> str:
    """A share from 0 to 1 as a whole percentage; "–" for none."""
    return "–" if value is None else f"{round(100 * value)} %"


@register.filter
def p_value(value: float | None) -> str:
    """A p-value with two significant digits, down to "p < 0.0001"; "" for none."""
    if value is None:
        return ""
    return "p < 0.0001" if value < 0.0001 else f"p = {value:.2g}"
