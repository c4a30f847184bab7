"""``report.html``: one page that shows what ``python -m magnifier.evaluate`` computed.

The page holds the metrics table (plain and re-ranked rows), the CMC curve and the distribution
of per-query AP as inline SVG drawn here (no plotting library), and the ranked-list pictures of
the worst and best queries in a table that sorts by a click on a header and filters by text or
by an AP limit. It is a single file of plain HTML, inline CSS and a little vanilla JavaScript:
it needs no network, no server and nothing installed, so it opens from a run folder, a mail
attachment or an artifact store alike. The pictures are inlined as base64 data URIs by default
(``embed_images=False`` links the PNG files beside it instead, for a smaller page).

The view state (sort column and direction, filter text, AP limit) lives in the URL's fragment,
e.g. ``report.html#sort=ap&dir=desc&ap_below=50``, so that a link can point at a view.
"""

from __future__ import annotations

import base64
import html
import math
import os
import re
from pathlib import Path
from typing import Iterable, Mapping, Sequence
from urllib.parse import quote

import numpy as np

__all__ = ["ap_histogram", "ap_histogram_svg", "cmc_svg", "metrics_table_html", "ranked_lists_html",
           "write_report"]

#: The metrics of a row, in the order and with the headers of the table (values are fractions).
METRICS = (("rank1", "Rank-1"), ("rank5", "Rank-5"), ("rank10", "Rank-10"), ("mAP", "mAP"),
           ("mINP", "mINP"))
#: How the rows of ``evaluate()`` read on the page.
ROW_LABELS = {"plain": "plain", "reranked": "re-ranked"}
# One colour per row of the CMC plot (plain, re-ranked, then any further rows).
_SERIES_COLOURS = ("#1f5fa8", "#d0562b", "#2e8b57", "#7b3fa0")
_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
         ".webp": "image/webp"}


def _esc(value: object) -> str:
    """Text or an attribute value made safe for HTML (quotes included)."""
    return html.escape(str(value), quote=True)


def _row_label(name: str) -> str:
    """A row of ``evaluate()`` as the page names it."""
    return ROW_LABELS.get(name, name)


def _pct(fraction: float) -> str:
    """A fraction as the percent text of the console table (two decimals)."""
    return f"{100 * float(fraction):.2f}"


# --------------------------------------------------------------------------- tables


def metrics_table_html(rows: Mapping[str, Mapping[str, float]]) -> str:
    """The metrics table: one row per entry of ``rows`` (``summarize()`` results, fractions),
    the values in percent; valid and skipped query counts when the rows carry them."""
    head = "".join(f"<th>{_esc(title)} (%)</th>" for _, title in METRICS)
    lines = [f'<table id="metrics" class="metrics"><thead><tr><th>ranking</th>{head}'
             "<th>valid queries</th><th>skipped</th></tr></thead><tbody>"]
    for name, row in rows.items():
        cells = "".join(f'<td class="num" data-metric="{key}">{_pct(row[key])}</td>'
                        for key, _ in METRICS if key in row)
        counts = "".join(f'<td class="num">{_esc(row.get(key, ""))}</td>'
                         for key in ("num_valid_queries", "num_skipped_queries"))
        label = _esc(_row_label(name))
        lines.append(f'<tr data-row="{_esc(name)}"><th>{label}</th>{cells}{counts}</tr>')
    lines.append("</tbody></table>")
    return "\n".join(lines)


def _info_table_html(facts: Mapping[str, object]) -> str:
    """A two-column table of what was evaluated (dataset, checkpoint, counts, settings)."""
    body = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in facts.items()
                   if v is not None and v != "")
    return f'<table id="info" class="info"><tbody>{body}</tbody></table>'


# --------------------------------------------------------------------------- SVG plots


def _nice_step(span: float, max_ticks: int) -> float:
    """The smallest 1, 2 or 5 times a power of ten that cuts ``span`` into at most ``max_ticks``."""
    span = max(float(span), 1e-9)
    power = 10.0 ** math.floor(math.log10(span / max_ticks))
    for factor in (1, 2, 5, 10):
        if span / (factor * power) <= max_ticks:
            return factor * power
    return 10 * power


class _Frame:
    """A plot area: maps data coordinates to SVG pixels and draws axes, ticks and labels."""

    def __init__(self, x_range, y_range, width=640, height=340, margin=(16, 180, 46, 56)):
        self.width, self.height = width, height
        self.top, self.right, self.bottom, self.left = margin
        self.x_range, self.y_range = x_range, y_range

    def x(self, value: float) -> float:
        """The pixel column of a data x value."""
        lo, hi = self.x_range
        return self.left + (value - lo) / (hi - lo) * (self.width - self.left - self.right)

    def y(self, value: float) -> float:
        """The pixel row of a data y value (SVG rows grow downwards)."""
        lo, hi = self.y_range
        span = self.height - self.top - self.bottom
        return self.height - self.bottom - (value - lo) / (hi - lo) * span

    def axes(self, x_ticks: Iterable[float], y_ticks: Iterable[float], x_label: str, y_label: str,
             x_text=str, y_text=str) -> list[str]:
        """SVG elements of the grid, both axes with their ticks, and the axis titles."""
        left, bottom = self.left, self.height - self.bottom
        right, top = self.width - self.right, self.top
        out = []
        for t in y_ticks:
            y = self.y(t)
            out.append(f'<line class="grid" x1="{left}" y1="{y:.1f}" x2="{right}" y2="{y:.1f}"/>')
            out.append(f'<text class="tick" x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">'
                       f"{_esc(y_text(t))}</text>")
        for t in x_ticks:
            x = self.x(t)
            out.append(f'<line class="axis" x1="{x:.1f}" y1="{bottom}" x2="{x:.1f}" '
                       f'y2="{bottom + 5}"/>')
            out.append(f'<text class="tick" x="{x:.1f}" y="{bottom + 18}" text-anchor="middle">'
                       f"{_esc(x_text(t))}</text>")
        out.append(f'<line class="axis" x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}"/>')
        out.append(f'<line class="axis" x1="{left}" y1="{top}" x2="{left}" y2="{bottom}"/>')
        out.append(f'<text class="label" x="{(left + right) / 2:.1f}" y="{self.height - 8}" '
                   f'text-anchor="middle">{_esc(x_label)}</text>')
        out.append(f'<text class="label" transform="translate(14 {(top + bottom) / 2:.1f}) '
                   f'rotate(-90)" text-anchor="middle">{_esc(y_label)}</text>')
        return out

    def svg(self, elements: list[str], element_id: str, title: str) -> str:
        """The finished ``<svg>`` with an accessible title."""
        body = "\n".join(elements)
        return (f'<svg id="{element_id}" class="plot" viewBox="0 0 {self.width} {self.height}" '
                f'width="{self.width}" height="{self.height}" role="img" '
                f'xmlns="http://www.w3.org/2000/svg"><title>{_esc(title)}</title>\n{body}\n</svg>')


def _rank_ticks(num_ranks: int) -> list[int]:
    """Rank 1, then the multiples of a round step up to ``num_ranks``."""
    step = max(1, int(_nice_step(num_ranks, 10)))
    return [1] + [r for r in range(step, num_ranks + 1, step) if r != 1]


def cmc_svg(cmc: Mapping[str, Sequence[float]], max_ranks: int = 50) -> str:
    """The CMC curves (fractions, rank 1 first) of each row as one SVG line plot in percent.

    The first ``max_ranks`` ranks are drawn, one point per rank; the y axis starts at the tens
    below the lowest value so that close curves stay apart. Every point has a hover title.
    """
    curves = {name: 100 * np.asarray(c, dtype=np.float64)[:max_ranks] for name, c in cmc.items()}
    curves = {name: c for name, c in curves.items() if c.size}
    if not curves:
        return '<p class="empty">no CMC curve</p>'
    num_ranks = max(c.size for c in curves.values())
    low = min(float(c.min()) for c in curves.values())
    y_low = min(90.0, 10 * math.floor(low / 10))
    frame = _Frame((1, max(num_ranks, 2)), (y_low, 100))
    out = frame.axes(_rank_ticks(num_ranks), np.arange(y_low, 100.1, 10), "rank", "matched (%)",
                     y_text=lambda t: f"{t:.0f}")
    for i, (name, curve) in enumerate(curves.items()):
        colour = _SERIES_COLOURS[i % len(_SERIES_COLOURS)]
        points = [(frame.x(r + 1), frame.y(v)) for r, v in enumerate(curve)]
        label = _row_label(name)
        out.append(f'<polyline class="cmc" data-row="{_esc(name)}" fill="none" stroke="{colour}" '
                   f'stroke-width="2" points="{" ".join(f"{x:.1f},{y:.1f}" for x, y in points)}"/>')
        out += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{colour}"><title>{_esc(label)} '
                f'rank {r + 1}: {v:.2f}%</title></circle>'
                for r, ((x, y), v) in enumerate(zip(points, curve))]
        legend_y = frame.top + 14 + 18 * i
        legend_x = frame.width - frame.right + 14
        out.append(f'<line x1="{legend_x}" y1="{legend_y - 4}" x2="{legend_x + 22}" '
                   f'y2="{legend_y - 4}" stroke="{colour}" stroke-width="3"/>')
        out.append(f'<text class="legend" x="{legend_x + 28}" y="{legend_y}">{_esc(label)}, '
                   f'rank-1 {curve[0]:.1f}%</text>')
    return frame.svg(out, "cmc", f"CMC curve, ranks 1 to {num_ranks}")


def _valid_ap(ap, valid=None) -> np.ndarray:
    """The AP of the queries that have a true match (``valid``; default: AP is not NaN)."""
    ap = np.asarray(ap, dtype=np.float64)
    keep = ~np.isnan(ap) if valid is None else np.asarray(valid, dtype=bool) & ~np.isnan(ap)
    return ap[keep]


def ap_histogram(ap, valid=None, bins: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """(counts, edges) of the valid queries' AP over ``bins`` equal bins of [0, 1] (the last
    bin holds AP = 1)."""
    return np.histogram(np.clip(_valid_ap(ap, valid), 0.0, 1.0), bins=bins, range=(0.0, 1.0))


def ap_histogram_svg(ap, valid=None, bins: int = 20) -> str:
    """The distribution of per-query AP (percent) as an SVG histogram, the mean (mAP) dashed."""
    counts, edges = ap_histogram(ap, valid, bins)
    if counts.sum() == 0:
        return '<p class="empty">no query with a true match</p>'
    step = _nice_step(counts.max(), 6)
    top = step * math.ceil(counts.max() / step)
    frame = _Frame((0, 100), (0, top))
    y_ticks = np.arange(0, top + step / 2, step)
    out = frame.axes(range(0, 101, 10), y_ticks, "AP (%)", "queries", y_text=lambda t: f"{t:g}")
    for count, lo, hi in zip(counts, 100 * edges[:-1], 100 * edges[1:]):
        x, width = frame.x(lo) + 1, frame.x(hi) - frame.x(lo) - 2
        y = frame.y(count)
        out.append(f'<rect class="bar" data-count="{int(count)}" x="{x:.1f}" y="{y:.1f}" '
                   f'width="{width:.1f}" height="{frame.y(0) - y:.1f}"><title>AP {lo:g}-{hi:g}%: '
                   f'{int(count)} queries</title></rect>')
    mean = 100 * float(_valid_ap(ap, valid).mean())
    x = frame.x(mean)
    out.append(f'<line class="mean" x1="{x:.1f}" y1="{frame.top}" x2="{x:.1f}" '
               f'y2="{frame.y(0):.1f}"/>')
    out.append(f'<text class="legend" x="{frame.width - frame.right + 14}" y="{frame.top + 14}">'
               f"mAP {mean:.1f}% (dashed)</text>")
    return frame.svg(out, "ap-histogram", f"AP of {int(counts.sum())} queries")


# --------------------------------------------------------------------------- ranked lists


def _picture_src(picture: str | os.PathLike, out_dir: Path, embed: bool) -> str | None:
    """The ``src`` of a picture (relative to ``out_dir`` when not absolute): a data URI, or a
    URL-quoted relative path; None when the file is missing."""
    path = Path(picture)
    path = path if path.is_absolute() else out_dir / path
    if not path.is_file():
        return None
    if embed:
        mime = _MIME.get(path.suffix.lower(), "application/octet-stream")
        return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"
    relative = Path(os.path.relpath(path, out_dir)).as_posix()
    return quote(relative)


def _ap_percent(ap) -> str:
    """AP (a fraction) as percent text; empty for a query without a true match (None/NaN)."""
    if ap is None or math.isnan(float(ap)):
        return ""
    return f"{100 * float(ap):.2f}"


def _label_of(facts: Mapping) -> str:
    """The list's label (worst01, best03, query): given, or read from the picture's file name
    (evaluate.py names it ``<label>_<query stem>.png``)."""
    if facts.get("label"):
        return str(facts["label"])
    match = re.match(r"(worst\d+|best\d+|query)_", Path(str(facts.get("picture", ""))).name)
    return match.group(1) if match else ""


def _ranked_row_html(index: int, facts: Mapping, out_dir: Path, embed: bool) -> str:
    """One ``<tr>`` of the ranked-list table; its ``data-*`` values are what the script sorts
    and filters on (AP in percent, empty when the query has no true match)."""
    name = Path(str(facts.get("query", ""))).name
    label = _label_of(facts)
    camera = facts.get("camera", facts.get("camid", ""))
    ap_pct = _ap_percent(facts.get("AP"))
    first = facts.get("first_rank")
    first = "" if not first else int(first)  # 0: no true match
    search = " ".join(str(v) for v in (label, name, facts.get("pid", ""), camera)).lower()
    src = _picture_src(facts["picture"], out_dir, embed) if facts.get("picture") else None
    missing = _esc(facts.get("picture", ""))
    picture = (f'<img src="{_esc(src)}" alt="ranked list of {_esc(name)}">' if src is not None
               else f'<span class="missing">picture missing: {missing}</span>')
    data = {"index": index, "label": label, "query": name, "pid": facts.get("pid", ""),
            "camera": camera, "ap": ap_pct, "rank": first, "search": search}
    attrs = " ".join(f'data-{k}="{_esc(v)}"' for k, v in data.items())
    cells = [label, name, facts.get("pid", ""), camera, ap_pct or "no true match", first]
    tds = "".join(f"<td>{_esc(c)}</td>" for c in cells)
    return f'<tr {attrs}>{tds}<td class="picture">{picture}</td></tr>'


# (key, header, type) of the sortable columns; the key names the row's data-* attribute. A
# camera is a name as the dataset gives it: "auto" sorts numbers as numbers ("2" before "10").
_RANKED_COLUMNS = (("index", "list", "num"), ("query", "query", "text"),
                   ("pid", "identity", "num"), ("camera", "camera", "auto"),
                   ("ap", "AP (%)", "num"), ("rank", "first true match", "num"))


def ranked_lists_html(ranked_lists: Sequence[Mapping], out_dir: str | Path,
                      embed: bool = True) -> str:
    """The filter boxes and the sortable table of ranked-list pictures.

    ``ranked_lists`` are the facts dicts of ``metrics.json``: ``query`` (path), ``pid``,
    ``camid`` (or a ``camera`` name), ``AP`` (fraction or None), ``first_rank``, ``picture``
    (a path relative to ``out_dir``, or absolute) and optionally ``label``.
    """
    if not ranked_lists:
        return '<p class="empty">no ranked lists were drawn</p>'
    out_dir = Path(out_dir)
    heads = "".join(f'<th data-key="{k}" data-type="{t}" tabindex="0" title="sort by {_esc(h)}">'
                    f"{_esc(h)}</th>" for k, h, t in _RANKED_COLUMNS)
    rows = "\n".join(_ranked_row_html(i, f, out_dir, embed) for i, f in enumerate(ranked_lists))
    controls = ('<div class="controls"><label>filter <input id="filter" type="search" '
                'placeholder="name, label, identity, camera"></label> '
                '<label>AP below <input id="ap-below" type="number" min="0" max="100" step="1" '
                'placeholder="%"> %</label> <span id="shown"></span></div>')
    return (f'{controls}\n<div class="scroll"><table id="ranked" class="ranked"><thead><tr>{heads}'
            f"<th>ranked list</th></tr></thead><tbody>\n{rows}\n</tbody></table></div>")


# --------------------------------------------------------------------------- page

_CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; background: #fff; }
h1 { font-size: 1.5em; margin: 0 0 .5em; } h2 { font-size: 1.2em; margin: 1.6em 0 .5em; }
table { border-collapse: collapse; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: middle; }
thead th { background: #eef1f5; }
.metrics td.num { text-align: right; font-variant-numeric: tabular-nums; }
.info th { background: #f6f6f6; font-weight: normal; color: #555; }
.plot .grid { stroke: #e4e4e4; } .plot .axis { stroke: #333; }
.plot .tick, .plot .legend { font-size: 11px; fill: #333; }
.plot .label { font-size: 12px; fill: #222; } .plot .bar { fill: #1f5fa8; }
.plot .mean { stroke: #d0562b; stroke-width: 2; stroke-dasharray: 5 4; }
.ranked thead th { cursor: pointer; user-select: none; white-space: nowrap; }
.ranked thead th[aria-sort="ascending"]::after { content: " \\25B2"; }
.ranked thead th[aria-sort="descending"]::after { content: " \\25BC"; }
.scroll { overflow-x: auto; max-width: 100%; }
/* the pictures at their natural size, so that their captions stay legible */
.ranked td.picture img { display: block; max-width: none; }
.ranked tr.hidden { display: none; } .missing { color: #b00; }
.controls { margin: .5em 0; } .controls input { width: 14em; } #ap-below { width: 5em; }
#shown { margin-left: 1.5em; color: #555; }
.empty, .note { color: #666; }
"""

# The table's behaviour. Sorting goes through the header's click handler also when the URL's
# fragment asks for it, so that one code path serves users and links; rows without a value
# (no true match) sort last either way. On load the page records on <body> that the script ran
# and how many pictures decoded, which a headless browser can read back from the DOM.
_JS = """
(function () {
  'use strict';
  var body = document.body;
  window.addEventListener('error', function () {
    body.dataset.jsErrors = String(Number(body.dataset.jsErrors || 0) + 1);
  });
  var table = document.getElementById('ranked');
  var filter = document.getElementById('filter');
  var apBelow = document.getElementById('ap-below');
  var state = {key: null, dir: 'asc'};

  function cellValue(row, key, type) {
    var raw = row.dataset[key];
    if (raw === undefined || raw === '') { return null; }
    if (type === 'num' || (type === 'auto' && !isNaN(Number(raw)))) { return Number(raw); }
    return raw.toLowerCase();
  }

  function compare(a, b, key, type, sign) {
    var va = cellValue(a, key, type), vb = cellValue(b, key, type);
    if (va === null || vb === null) {
      if (va === vb) { return 0; }
      return va === null ? 1 : -1;
    }
    if (va < vb) { return -sign; }
    if (va > vb) { return sign; }
    return Number(a.dataset.index) - Number(b.dataset.index);
  }

  function sortBy(th) {
    var key = th.dataset.key, type = th.dataset.type;
    state.dir = (state.key === key && state.dir === 'asc') ? 'desc' : 'asc';
    state.key = key;
    var sign = state.dir === 'asc' ? 1 : -1;
    var tbody = table.tBodies[0];
    var rows = Array.prototype.slice.call(tbody.rows);
    rows.sort(function (a, b) { return compare(a, b, key, type, sign); });
    rows.forEach(function (row) { tbody.appendChild(row); });
    table.querySelectorAll('thead th').forEach(function (h) { h.removeAttribute('aria-sort'); });
    th.setAttribute('aria-sort', state.dir === 'asc' ? 'ascending' : 'descending');
    saveView();
  }

  function applyFilter() {
    var text = filter.value.trim().toLowerCase();
    var limit = apBelow.value === '' ? null : Number(apBelow.value);
    var rows = table.tBodies[0].rows, shown = 0;
    for (var i = 0; i < rows.length; i++) {
      var row = rows[i], ap = cellValue(row, 'ap', 'num');
      var keep = row.dataset.search.indexOf(text) !== -1 &&
                 (limit === null || (ap !== null && ap < limit));
      row.classList.toggle('hidden', !keep);
      shown += keep ? 1 : 0;
    }
    table.dataset.shown = String(shown);
    document.getElementById('shown').textContent = shown + ' of ' + rows.length + ' shown';
    saveView();
  }

  function saveView() {
    var view = new URLSearchParams();
    if (state.key) { view.set('sort', state.key); view.set('dir', state.dir); }
    if (filter.value) { view.set('q', filter.value); }
    if (apBelow.value !== '') { view.set('ap_below', apBelow.value); }
    var hash = view.toString();
    history.replaceState(null, '', hash ? '#' + hash : location.pathname + location.search);
  }

  function loadView() {
    var view = new URLSearchParams(location.hash.slice(1));
    filter.value = view.get('q') || '';
    apBelow.value = view.get('ap_below') || '';
    applyFilter();
    var th = table.querySelector('thead th[data-key="' + (view.get('sort') || '') + '"]');
    if (th) {
      th.click();
      if (view.get('dir') === 'desc') { th.click(); }
    }
  }

  function countPictures() {
    var images = document.querySelectorAll('img'), loaded = 0;
    images.forEach(function (img) { loaded += (img.complete && img.naturalWidth > 0) ? 1 : 0; });
    body.dataset.imagesTotal = String(images.length);
    body.dataset.imagesLoaded = String(loaded);
  }

  window.addEventListener('load', countPictures);
  if (table) {
    table.querySelectorAll('thead th[data-key]').forEach(function (th) {
      th.addEventListener('click', function () { sortBy(th); });
      th.addEventListener('keydown', function (event) {
        if (event.key === 'Enter' || event.key === ' ') { event.preventDefault(); sortBy(th); }
      });
    });
    filter.addEventListener('input', applyFilter);
    apBelow.addEventListener('input', applyFilter);
    loadView();
  }
  body.dataset.ready = '1';
})();
"""


def _queries_note(ap, valid, ranking: str) -> str:
    """The line under the histogram: how many queries it counts and which ranking they follow."""
    total = 0 if ap is None else int(np.asarray(ap).size)
    counted = 0 if ap is None else int(_valid_ap(ap, valid).size)
    skipped = f"; {total - counted} without a true match left out" if total > counted else ""
    return (f'<p class="note">{counted} queries with a true match{_esc(skipped)}; ranking: '
            f"{_esc(_row_label(ranking))}.</p>")


def _page(title: str, sections: list[str]) -> str:
    """The whole HTML document around ``sections``, with the style and the script inline."""
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width\"><title>{_esc(title)}</title>"
            f"<style>{_CSS}</style></head>\n<body>\n" + "\n".join(sections)
            + f"\n<script>{_JS}</script>\n</body></html>\n")


def write_report(
    out_dir: str | Path,
    rows: Mapping[str, Mapping[str, float]],
    cmc: Mapping[str, Sequence[float]],
    ap=None,
    valid=None,
    ranked_lists: Sequence[Mapping] = (),
    *,
    dataset: str = "",
    checkpoint: str = "",
    num_query: int | None = None,
    num_gallery: int | None = None,
    ranking: str = "plain",
    details: Mapping[str, object] | None = None,
    embed_images: bool = True,
    max_ranks: int = 50,
    filename: str = "report.html",
) -> Path:
    """Write ``out_dir/report.html``, one self-contained page of an evaluation; returns its path.

    Args:
        out_dir: the run's output folder; relative picture paths are read from it.
        rows: ``{"plain": summarize(...), "reranked": ...}``: metrics as fractions.
        cmc: ``{"plain": cmc array, ...}``: each row's CMC (fractions, rank 1 first).
        ap: (Q,) per-query AP of the final ranking, NaN for a query without a true match; None
            leaves the histogram out.
        valid: (Q,) bool, the queries with a true match (default: AP is not NaN).
        ranked_lists: the facts dicts of ``metrics.json``'s ``ranked_lists`` (see
            :func:`ranked_lists_html`).
        dataset, checkpoint, num_query, num_gallery: what was evaluated, shown at the top.
        ranking: the row ``ap`` and the pictures follow (``plain`` or ``reranked``).
        details: further ``name: value`` lines for the top table (e.g. flip TTA, AP mode).
        embed_images: inline the pictures as data URIs (one file that travels alone); False
            links them by relative path (the page then needs its folder).
        max_ranks: ranks drawn in the CMC plot.
        filename: the page's file name in ``out_dir``.
    """
    out_dir = Path(out_dir)
    info = {"dataset": dataset, "checkpoint": checkpoint, "queries": num_query,
            "gallery images": num_gallery, **(details or {})}
    title = f"magnifier evaluation: {dataset}" if dataset else "magnifier evaluation"
    histogram = ('<p class="empty">no per-query AP</p>' if ap is None
                 else ap_histogram_svg(ap, valid) + _queries_note(ap, valid, ranking))
    page = _page(title, [
        f"<h1>{_esc(title)}</h1>", _info_table_html(info),
        "<h2>Metrics</h2>", metrics_table_html(rows),
        "<h2>CMC curve</h2>", cmc_svg(cmc, max_ranks),
        "<h2>Per-query AP</h2>", histogram,
        "<h2>Ranked lists</h2>",
        '<p class="note">Click a header to sort (again to reverse); the view is kept in the '
        "link.</p>",
        ranked_lists_html(ranked_lists, out_dir, embed_images),
    ])
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / filename
    # Written beside and renamed, so that a reader never sees half a page.
    partial = path.with_name(path.name + ".partial")
    partial.write_text(page, encoding="utf-8")
    os.replace(partial, path)
    return path
