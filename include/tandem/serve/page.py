"""The status page: ``status.collect()`` rendered to one HTML document.

Server-rendered with Jinja2 (autoescaped) from ``templates/status.html``; CSS and the SVG charts are inline,
there is no JavaScript and no build step, and nothing is fetched from the internet (links only).
"""

from __future__ import annotations

import datetime as dt
import functools
from pathlib import Path
from typing import Any, Sequence

TEMPLATES = Path(__file__).resolve().parent / "templates"


@functools.lru_cache(maxsize=1)
def _env():
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)),
                             autoescape=jinja2.select_autoescape(["html"]), undefined=jinja2.ChainableUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters["age"] = age
    env.filters["ts"] = ts
    env.filters["num"] = num
    env.filters["pct"] = pct
    env.globals["chart"] = chart
    env.globals["bars"] = bars
    return env


def render(status: dict[str, Any]) -> str:
    """The HTML page for a ``status.collect()`` result."""
    return _env().get_template("status.html").render(s=status, k=status.get("knowledge") or {},
                                                     b=status.get("behavior") or {})


# --- formatting helpers (template filters)


def _parse_time(value: Any) -> dt.datetime | None:
    if not value:
        return None
    if isinstance(value, dt.datetime):
        parsed = value
    else:
        text = str(value).strip().replace("Z", "+00:00")
        try:
            parsed = dt.datetime.fromisoformat(text)
        except ValueError:
            return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)


def age(value: Any, now: dt.datetime | None = None) -> str:
    """'3 h ago' for a timestamp; '' when there is none."""
    when = None if _missing(value) else _parse_time(value)
    if when is None:
        return ""
    seconds = ((now or dt.datetime.now(dt.timezone.utc)) - when).total_seconds()
    if seconds < 0:
        return "just now"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit} ago"
    return f"{int(seconds)} s ago"


def _missing(value: Any) -> bool:
    import jinja2

    return value is None or isinstance(value, jinja2.Undefined) or value == ""


def ts(value: Any) -> str:
    """A timestamp as 'YYYY-MM-DD HH:MM UTC' (the raw text when it does not parse)."""
    if _missing(value):
        return "–"
    when = _parse_time(value)
    if when is None:
        return str(value)
    return when.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def num(value: Any, digits: int = 3) -> str:
    if _missing(value):
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    try:
        return f"{float(value):.{digits}f}"
    except (TypeError, ValueError):
        return str(value)


def pct(value: Any) -> str:
    if _missing(value):
        return "–"
    try:
        return f"{100 * float(value):.0f}%"
    except (TypeError, ValueError):
        return "–"


# --- inline SVG geometry


def chart(values: Sequence[float | None], labels: Sequence[str] = (), *, width: int = 360, height: int = 96,
          lo: float | None = 0.0, hi: float | None = 1.0, threshold: float | None = None) -> dict[str, Any]:
    """Geometry of a small line chart: polyline points, dots with titles, an optional threshold line."""
    pad_x, pad_y = 8, 10
    pts = [(i, float(v)) for i, v in enumerate(values) if v is not None]
    if not pts:
        return {"empty": True, "width": width, "height": height}
    vals = [v for _, v in pts] + ([threshold] if threshold is not None else [])
    y_lo = min(vals) if lo is None else min(lo, min(vals))
    y_hi = max(vals) if hi is None else max(hi, max(vals))
    if y_hi - y_lo < 1e-9:
        y_lo, y_hi = y_lo - 0.5, y_hi + 0.5
    n = max(len(values) - 1, 1)

    def x(i: float) -> float:
        return round(pad_x + (width - 2 * pad_x) * (i / n if len(values) > 1 else 0.5), 1)

    def y(v: float) -> float:
        return round(height - pad_y - (height - 2 * pad_y) * (v - y_lo) / (y_hi - y_lo), 1)

    dots = [{"x": x(i), "y": y(v), "title": f"{labels[i] if i < len(labels) else i}: {v:.3f}", "value": v}
            for i, v in pts]
    return {
        "empty": False, "width": width, "height": height,
        "points": " ".join(f"{d['x']},{d['y']}" for d in dots),
        "dots": dots,
        "threshold_y": None if threshold is None else y(threshold),
        "threshold": threshold,
        "lo": y_lo, "hi": y_hi,
        "last": pts[-1][1],
    }


def bars(mix: dict[str, float] | None) -> list[dict[str, Any]]:
    """Rows of a horizontal bar chart for a {class: share or count} mix (widths in % of the largest total)."""
    if not mix:
        return []
    total = sum(max(float(v), 0.0) for v in mix.values())
    rows = []
    for name, value in sorted(mix.items(), key=lambda kv: (-float(kv[1]), kv[0])):
        share = float(value) / total if total > 0 else 0.0
        rows.append({"name": name, "value": float(value), "share": share, "width": round(100 * share, 1)})
    return rows
