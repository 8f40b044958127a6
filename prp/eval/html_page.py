"""The page of report.html: query views, the data block, escaping, images and the HTML around the
per-query browser (its script and style: :mod:`prp.eval.html_assets`; the adapters and writers:
:mod:`prp.eval.html`).

Self-contained and safe by construction:
- everything is inside the one file: plots and image thumbnails are embedded as ``data:`` URIs
  (a thumbnail is at most ``THUMB_PX`` pixels a side, a few KB), the full image is a *relative*
  link (works from disk while the report stays next to the data); no CDN, no font, no fetch.
  A Content-Security-Policy allows only data: images and the page's own script (by its hash).
- the data goes in as JSON inside ``<script type="application/json">`` with ``<``, ``>`` and
  ``&`` written as ``\\u003c`` / ``\\u003e`` / ``\\u0026`` (U+2028/9 are escaped by
  ``ensure_ascii``), so no text can close the script element; the page's script shows model text
  with ``textContent`` only.  Static tables are escaped with :func:`html.escape`.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import logging
import math
import os
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from prp.eval.html_assets import CSS, JS

log = logging.getLogger(__name__)

PAGE_SIZE = 100  # rows in the DOM at once; 5,000 queries stay fast
THUMB_PX = 160
# one query view: what the per-query browser shows (None where unknown)
# fmt: off
QUERY_KEYS = (
    "index", "id", "split", "question", "gold", "d", "t", "ipr_d", "ipr_t", "score", "route",
    "draft_answer", "target_answer", "correct", "draft_correct", "target_correct", "latency_s",
    "error", "thumb", "image_href", "has_image",
)
# fmt: on


def query_view(index: int, **fields) -> dict:
    """One query view: every key of QUERY_KEYS (None unless given); a key outside it is a bug.

    >>> v = query_view(3, id="q", route="draft")
    >>> v["index"], v["route"], v["score"]
    (3, 'draft', None)
    """
    view = dict.fromkeys(QUERY_KEYS)
    unknown = set(fields) - set(QUERY_KEYS)
    if unknown:
        raise KeyError(f"not query-view keys: {sorted(unknown)}")
    view.update(fields, index=index)
    return view


# ---- images ---------------------------------------------------------------------------------
def thumbnail_uri(image, *, max_px: int = THUMB_PX) -> str | None:
    """A JPEG thumbnail (longest side <= max_px) as a data URI; ``image`` is a path or a PIL image.
    None (logged) when it cannot be read: a broken image never breaks the report."""
    from PIL import Image

    try:
        if isinstance(image, (str, Path)):
            from prp.core.data import open_image  # size limits checked before decoding

            image = open_image(image)
        im = image.convert("RGB")
        im.thumbnail((max_px, max_px), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=80)
    except Exception as exc:  # any unreadable image becomes "(no preview)"
        log.warning("no thumbnail for %r: %s", image if isinstance(image, (str, Path)) else "image", exc)
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def relative_href(path, base_dir: str | Path) -> str | None:
    """A URL-quoted relative link from ``base_dir`` to an existing image file, else None.

    >>> relative_href(__file__, Path(__file__).parent.parent)
    'eval/html_page.py'
    """
    try:  # is_file raises on a name too long (ENAMETOOLONG) or holding a NUL: no link, not a crash
        if not isinstance(path, (str, Path)) or not Path(path).is_file():
            return None
        rel = os.path.relpath(Path(path).resolve(), Path(base_dir).resolve())
    except (OSError, ValueError):
        return None
    return urllib.parse.quote(Path(rel).as_posix())


def attach_images(views: list[dict], html_dir: str | Path, *, max_px: int = THUMB_PX) -> int:
    """Fill ``thumb`` and ``image_href`` from each view's ``_image`` (removed); returns how many
    images could not be previewed.  One thumbnail per distinct image path."""
    cache: dict[str, str | None] = {}
    failed = 0
    for v in views:
        image = v.pop("_image", None)
        if image is None:
            continue
        if isinstance(image, (str, Path)):
            key = str(image)
            if key not in cache:
                cache[key] = thumbnail_uri(image, max_px=max_px)
            v["thumb"], v["image_href"] = cache[key], relative_href(image, html_dir)
        else:
            v["thumb"] = thumbnail_uri(image, max_px=max_px)
        failed += v["thumb"] is None
    return failed


# ---- page -----------------------------------------------------------------------------------
def _plain(obj):
    """JSON-safe: NaN/inf -> None, numpy scalars -> Python, Paths -> str."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        obj = obj.item()  # numpy scalar
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return str(obj) if isinstance(obj, Path) else obj


def script_json(obj) -> str:
    """JSON that is safe inside a ``<script>`` element: no ``<``, ``>``, ``&`` or line separator
    appears literally, so neither ``</script>`` nor ``<!--`` can end or bend the element.

    >>> script_json({"a": "</script><b>&\\u2028"})
    '{"a": "\\\\u003c/script\\\\u003e\\\\u003cb\\\\u003e\\\\u0026\\\\u2028"}'
    """
    text = json.dumps(_plain(obj), ensure_ascii=True, allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def esc(x) -> str:
    return html.escape("" if x is None else str(x), quote=True)


def html_table(head: Sequence[str], rows: Sequence[Sequence[Any]], *, cls: str = "num", id: str = "") -> str:
    ident = f' id="{esc(id)}"' if id else ""
    out = [
        f'<table class="{esc(cls)}"{ident}><thead><tr>'
        + "".join(f"<th>{esc(h)}</th>" for h in head)
        + "</tr></thead><tbody>"
    ]
    out += ["<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows]
    return "\n".join(out) + "</tbody></table>"


def plots_html(plots: Mapping[str, str | Path]) -> str:
    """The PNG plots, embedded."""
    imgs = []
    for name, path in plots.items():
        data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
        imgs.append(f'<img alt="{esc(name)}" title="{esc(name)}" src="data:image/png;base64,{data}">')
    if not imgs:
        return ""
    return (
        '<details open><summary><h2>Plots</h2></summary><div class="plots">'
        + "\n".join(imgs)
        + "</div></details>"
    )


def csp(script: str) -> str:
    """Only data: images, inline styles and this exact script (by its SHA-256) may load."""
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")
    return f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'sha256-{digest}'"


QUERY_COLUMNS = (  # (header, sort key or "")
    ("image", ""),
    ("id", "id"),
    ("split", "split"),
    ("question", ""),
    ("gold", ""),
    ("d", "d"),
    ("t", "t"),
    ("IPR d / t", ""),
    ("score", "score"),
    ("route", "route"),
    ("draft answer", ""),
    ("target answer", ""),
    ("correct", "correct"),
    ("latency (s)", "latency_s"),
)


def render_page(
    *,
    title: str,
    queries: Sequence[dict],
    sections: Sequence[str] = (),
    mislabel_ids: Sequence[str] = (),
    mislabel_title: str = "High rating but wrong (A.7)",
    route_note: str = "",
    page_size: int = PAGE_SIZE,
) -> str:
    """The whole page.  ``sections`` are trusted HTML fragments built with :func:`esc`;
    ``queries`` are query views (model text inside them is shown as text only)."""
    queries = [{k: q.get(k) for k in QUERY_KEYS} for q in queries]
    splits = sorted({q["split"] for q in queries if q["split"]})
    routes = [r for r in ("draft", "target", "fallback", "error") if any(q["route"] == r for q in queries)]
    data = {
        "queries": queries,
        "splits": splits,
        "routes": routes,
        "mislabel_ids": list(mislabel_ids),
        "page_size": page_size,
    }
    heads = "".join(
        f'<th data-key="{esc(k)}">{esc(h)}</th>' if k else f"<th>{esc(h)}</th>" for h, k in QUERY_COLUMNS
    )
    sizes = "".join(
        f'<option value="{n}">{n or "all"}</option>' for n in [*sorted({50, 100, 500, page_size}), 0]
    )
    mislabel = (
        f'<h2>{esc(mislabel_title)}</h2><p id="mislabel-count">{len(mislabel_ids)} candidates '
        f'(possible annotation errors or training gaps).</p><div class="cards" id="mislabel-cards"></div>'
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{esc(csp(JS))}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)}</title><style>{CSS}</style></head>
<body>
<h1>{esc(title)}</h1>
{"".join(sections)}
<h2>Queries</h2>
<p>{esc(route_note)}</p>
<div class="controls">
<label>route <select id="f-route"><option value="">all</option></select></label>
<label>correct <select id="f-correct"><option value="">all</option><option value="yes">yes</option>
<option value="no">no</option><option value="-">unknown</option></select></label>
<label>split <select id="f-split"><option value="">all</option></select></label>
<label>score from <input type="number" step="any" id="f-score-min"></label>
<label>to <input type="number" step="any" id="f-score-max"></label>
<label>search <input type="search" id="f-text" placeholder="id, question, answer"></label>
<label>rows per page <select id="f-page-size">{sizes}</select></label>
</div>
<p><span id="match-count">0</span> of <span id="n-total">{len(queries)}</span> queries match;
<span id="page-info"></span> <button id="prev" type="button">previous</button>
<button id="next" type="button">next</button></p>
<table id="queries"><thead><tr>{heads}</tr></thead><tbody id="query-rows"></tbody></table>
{mislabel}
<script type="application/json" id="prp-data">{script_json(data)}</script>
<script>{JS}</script>
</body></html>
"""
