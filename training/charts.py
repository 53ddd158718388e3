"""Line charts of a round's metrics as SVG polylines, drawn on the server: no charting library, no CDN."""

from typing import Any

WIDTH, HEIGHT, PAD = 320, 120, 4
# What a lead watches: losses, reward-model accuracy, rewards and KL (the rest stays in the registry's report).
WATCHED = ("loss", "accurac", "reward", "kl", "beta", "entropy", "clip")


def charts_for(
    series: dict[str, list[tuple[int, float]]], lines: dict[str, list[tuple[str, float]]] | None = None
) -> list[dict[str, Any]]:
    """One chart per watched metric that has points, in the order the stages reported them; `lines` adds labelled
    horizontal lines to a chart by name (PPO's KL target)."""
    lines = lines or {}
    return [chart(name, points, lines.get(name, [])) for name, points in series.items() if _watched(name) and points]


def _watched(name: str) -> bool:
    metric = name.split("/", 1)[-1]
    return any(word in metric for word in WATCHED) and "grad_norm" not in metric


def chart(name: str, points: list[tuple[int, float]], lines: list[tuple[str, float]] = ()) -> dict[str, Any]:
    """The polyline's points in a WIDTH × HEIGHT box (y up), with the ranges and the last value for labels, and each
    of `lines` (label, value) as a height in the box; the range covers the lines too."""
    steps, values = [p[0] for p in points], [p[1] for p in points]
    low, high = min(values + [v for _, v in lines]), max(values + [v for _, v in lines])
    first, last = min(steps), max(steps)
    span_x, span_y = (last - first) or 1, (high - low) or 1

    def x(step: int) -> float:
        return PAD + (step - first) / span_x * (WIDTH - 2 * PAD)

    def y(value: float) -> float:
        return HEIGHT - PAD - (value - low) / span_y * (HEIGHT - 2 * PAD)

    return {
        "name": name,
        "points": " ".join(f"{x(s):.1f},{y(v):.1f}" for s, v in points),
        "lines": [{"label": label, "value": value, "y": f"{y(value):.1f}"} for label, value in lines],
        "low": low,
        "high": high,
        "last": values[-1],
        "last_step": steps[-1],
        "width": WIDTH,
        "height": HEIGHT,
    }
