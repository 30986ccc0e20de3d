"""What every HTML report here shares: number formatting, tables, embedded PNG plots, the stylesheet.

Reports are self-contained files: plots are matplotlib (Agg) PNGs embedded as ``data:`` URIs, text is escaped
unless it is :class:`Raw` (HTML produced by the report code itself, never user text).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path
from typing import Any


def png_data_uri(figure: Any) -> str:
    """A matplotlib figure as a ``data:image/png;base64,...`` URI."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


# The documents are JSON-safe (safetybed.jsonsafe): every non-finite number in them is null. What the field is
# says which number a null stands for.
def number(value: Any) -> float:
    """An estimate or SEM: null is NaN (none could be computed)."""
    return math.nan if value is None else float(value)


def lower_bound(value: Any) -> float:
    """A certified value (a lower confidence bound): null is ``-inf``, the bound that certifies nothing."""
    return -math.inf if value is None else float(value)


def upper_bound(value: Any) -> float:
    """An upper confidence bound: null is ``+inf`` (a quantile with too few episodes to bound it)."""
    return math.inf if value is None else float(value)


def fmt(value: Any, digits: int = 4) -> str:
    """One cell's text: ``-`` for missing or NaN, ``yes``/``no`` for booleans, ``digits`` significant digits."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float | int):
        if isinstance(value, float) and math.isnan(value):
            return "-"
        return f"{value:.{digits}g}"
    return str(value)


def write_json_and_html(document: dict[str, Any], out_dir: str | Path, *, json_name: str, page: str) -> dict[str, str]:
    """Write ``document`` as ``out_dir/json_name`` and ``page`` as ``out_dir/report.html``; returns their paths."""
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    json_path = folder / json_name
    json_path.write_text(json.dumps(document, indent=2, default=str), encoding="utf-8")
    html_path = folder / "report.html"
    html_path.write_text(page, encoding="utf-8")
    return {"json": str(json_path), "html": str(html_path)}


class Raw(str):
    """Trusted HTML produced here (never user text)."""


def table(table_id: str, header: list[str], rows: list[list[Any]], *, caption: str = "") -> str:
    """An HTML table; cells are :func:`fmt` and escaped unless they are :class:`Raw`."""
    escape = html.escape
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell if isinstance(cell, Raw) else escape(fmt(cell))}</td>"
                                    for cell in row) + "</tr>" for row in rows)
    caption_html = f"<caption>{escape(caption)}</caption>" if caption else ""
    return f'<table id="{table_id}">{caption_html}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def verdict(passed: bool) -> Raw:
    return Raw('<span class="pass">pass</span>' if passed else '<span class="fail">FAIL</span>')


def flatten(prefix: str, value: Any, out: list[list[Any]]) -> None:
    """Append ``[dotted.key, value]`` rows of a nested mapping to ``out`` (long lists shortened)."""
    if isinstance(value, dict):
        for key, item in value.items():
            flatten(f"{prefix}.{key}" if prefix else str(key), item, out)
    elif isinstance(value, list) and len(value) > 12:
        out.append([prefix, f"[{len(value)} values] " + json.dumps(value[:6]) + " ..."])
    else:
        out.append([prefix, json.dumps(value) if isinstance(value, list | dict) else value])


STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1000px;margin:2em auto;
color:#1d1d1f;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.8em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.6em 0;font-size:.86em}td,th{border:1px solid #ccc;padding:.25em .55em;
text-align:left;vertical-align:top}th{background:#f3f3f3}caption{text-align:left;font-style:italic;padding:.2em}
.pass{color:#116611;font-weight:600}.fail{color:#b00020;font-weight:700}.guarantee{background:#f4f8ff;
border-left:4px solid #3366cc;padding:.6em 1em}.note{color:#555;font-size:.9em}img{max-width:100%}
code{background:#f3f3f3;padding:0 .2em}
"""
