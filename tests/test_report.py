"""report.html: the HTML/SVG builders, then the page in a real (headless Chromium) browser."""

from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from magnifier.evaluation.report import (ap_histogram, ap_histogram_svg, cmc_svg,
                                         metrics_table_html, write_report)

ROWS = {
    "plain": {"rank1": 0.8125, "rank5": 0.9, "rank10": 0.93751, "mAP": 0.654321, "mINP": 0.3,
              "num_valid_queries": 9, "num_skipped_queries": 1},
    "reranked": {"rank1": 0.85, "rank5": 0.925, "rank10": 0.95, "mAP": 0.7, "mINP": 0.41,
                 "num_valid_queries": 9, "num_skipped_queries": 1},
}
CMC = {"plain": np.linspace(0.8125, 1.0, 30), "reranked": np.linspace(0.85, 1.0, 30)}
# Ten queries, the first without a true match; AP 0 and 1 sit on the histogram's edges.
AP = np.array([np.nan, 0.0, 0.05, 0.2, 0.5, 0.55, 0.8, 0.97, 1.0, 1.0])
WEIRD = 'a<b>&"c'  # a file name that must be escaped everywhere


class _Tags(HTMLParser):
    """Every start tag of a page as (tag, attributes)."""

    def __init__(self, page: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def find(self, tag, **attrs) -> list[dict]:
        return [a for t, a in self.tags
                if t == tag and all(a.get(k) == v for k, v in attrs.items())]


NAMES = ("0001_c1s1_000151_00", "0002_c2s1_000301_00", "0003_c3s1_0004_00")


def _ranked_facts(out_dir: Path, names=NAMES):
    """Ranked-list facts as evaluate.py writes them, with real pictures drawn by visualize.py."""
    from magnifier.evaluation.visualize import RankedItem, ranked_list_image

    folder = out_dir / "ranked_lists"
    folder.mkdir(parents=True, exist_ok=True)
    person = folder / "person.png"
    Image.new("RGB", (32, 64), (180, 40, 40)).save(person)
    items = [RankedItem(str(person), status, 0.1 * k, rank=k + 1) for k, status in
             enumerate(("wrong", "match", "junk", "match"))]
    part_map = np.repeat(np.arange(8), 8)[:, None].repeat(32, axis=1)
    facts = []
    for (label, ap), name in zip((("worst01", 0.1), ("best01", 1.0), ("query", None)), names):
        picture = f"ranked_lists/{label}_{name}.png"
        drawn = ranked_list_image(str(person), items, part_map, f"{label} {name}", cell=(32, 64))
        drawn.save(out_dir / picture)
        facts.append({"query": f"/data/query/{name}.jpg", "pid": int(name[:4]),
                      "camid": int(name[6]) - 1, "AP": ap, "first_rank": 0 if ap is None else 2,
                      "picture": picture})
    return facts


def _report(out_dir: Path, facts=None, **kwargs) -> Path:
    facts = _ranked_facts(out_dir) if facts is None else facts
    return write_report(out_dir, ROWS, CMC, AP, ~np.isnan(AP), facts, dataset="market",
                        checkpoint="runs/best.ckpt", num_query=10, num_gallery=40,
                        ranking="reranked", **kwargs)


def _page(out_dir: Path, *args, **kwargs) -> str:
    """The text of the report written into ``out_dir`` from the test's rows and CMC."""
    return write_report(out_dir, ROWS, CMC, *args, **kwargs).read_text(encoding="utf-8")


# --------------------------------------------------------------------------- builders


def test_metrics_table_shows_the_inputs_in_percent():
    table = metrics_table_html(ROWS)
    rows = dict(re.findall(r'<tr data-row="(\w+)">(.*?)</tr>', table))
    assert list(rows) == ["plain", "reranked"]
    for name, cells in rows.items():
        shown = dict(re.findall(r'data-metric="(\w+)">([^<]*)<', cells))
        assert list(shown) == ["rank1", "rank5", "rank10", "mAP", "mINP"]
        assert {k: float(v) for k, v in shown.items()} == pytest.approx(
            {k: 100 * ROWS[name][k] for k in shown}, abs=0.005)
    assert "<th>re-ranked</th>" in table
    assert 'data-metric="mAP">65.43<' in table and 'data-metric="rank10">93.75<' in table


def test_cmc_polyline_has_one_point_per_rank_shown():
    tags = _Tags(cmc_svg(CMC))
    lines = tags.find("polyline")
    assert [a["data-row"] for a in lines] == ["plain", "reranked"]
    assert all(len(a["points"].split()) == 30 for a in lines)
    # A longer curve is cut at max_ranks; its y values fall as the rank grows (higher = smaller y).
    long = _Tags(cmc_svg({"plain": np.linspace(0.5, 1, 80)}, max_ranks=50)).find("polyline")
    ys = [float(p.split(",")[1]) for p in long[0]["points"].split()]
    assert len(ys) == 50 and ys == sorted(ys, reverse=True)
    assert "rank" in cmc_svg(CMC) and "matched (%)" in cmc_svg(CMC)


def test_histogram_counts_every_valid_query_once():
    counts, edges = ap_histogram(AP, ~np.isnan(AP))
    # Bins hold their left edge: AP 0 | 0.05 | ... | 0.97, 1, 1 (the last bin holds AP = 1).
    assert counts.sum() == 9 and list(counts[:2]) == [1, 1] and counts[-1] == 3
    assert edges[0] == 0 and edges[-1] == 1
    bars = _Tags(ap_histogram_svg(AP)).find("rect")
    assert len(bars) == 20 and sum(int(b["data-count"]) for b in bars) == 9
    # A query marked invalid is left out even with an AP value.
    assert ap_histogram(AP, np.arange(10) > 4)[0].sum() == 5


def test_names_are_escaped(tmp_path):
    facts = _ranked_facts(tmp_path, names=(f"0001_c1s1_{WEIRD}",))
    page = _page(tmp_path, AP, None, facts, dataset=f"set {WEIRD}", checkpoint=f"/ck/{WEIRD}.ckpt",
                 details={f"note {WEIRD}": WEIRD})
    assert WEIRD not in page and "<b>" not in page
    assert page.count("a&lt;b&gt;&amp;&quot;c") >= 4  # title, dataset, checkpoint, query cell...
    hostile = [{"query": '/q/x"><script>alert(1)</script>.jpg', "pid": 1, "camid": 0, "AP": 0.5,
                "first_rank": 1, "picture": "ranked_lists/none.png"}]
    page = _page(tmp_path, ranked_lists=hostile)
    assert "<script>alert" not in page and "picture missing" in page


def test_pictures_inline_or_linked(tmp_path):
    facts = _ranked_facts(tmp_path, names=(f"0001_c1s1_{WEIRD}",))
    inline = _Tags(_page(tmp_path, ranked_lists=facts)).find("img")
    assert inline[0]["src"].startswith("data:image/png;base64,")
    linked = _Tags(_page(tmp_path, ranked_lists=facts, embed_images=False))
    src = linked.find("img")[0]["src"]
    assert src == "ranked_lists/worst01_0001_c1s1_a%3Cb%3E%26%22c.png"
    # The label is read from the picture's name when the facts carry none.
    assert linked.find("tr", **{"data-label": "worst01"})


def test_write_report_writes_one_page(tmp_path):
    path = _report(tmp_path)
    assert path == tmp_path / "report.html" and sorted(p.name for p in tmp_path.iterdir()) == [
        "ranked_lists", "report.html"]
    page = path.read_text(encoding="utf-8")
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in page and "<link" not in page and "src=\"http" not in page


# --------------------------------------------------------------------------- in a browser

BROWSER_TIMEOUT = 20  # seconds per Chromium call (about 2 s on two cores)
# Chromium's log line of a console message or uncaught exception (INFO level whatever the
# console method): ...:INFO:CONSOLE:12] "text", source: file:///... (12); older: CONSOLE(12)].
_CONSOLE = re.compile(r':CONSOLE(?::\d+|\(\d+\))\] "(.*)", source: ')


def _chromium_binary() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip("chromium not installed: make install installs it (apt-get install chromium)")


def _browse(page: Path, profile: Path, *args: str, fragment: str = "") -> tuple[str, list[str]]:
    """Open ``page`` headless with ``args``; returns (stdout, console messages)."""
    command = [_chromium_binary(), "--headless", "--no-sandbox", "--disable-gpu",
               "--disable-dev-shm-usage", "--enable-logging=stderr", "--v=0",
               f"--user-data-dir={profile}", *args, page.resolve().as_uri() + fragment]
    done = subprocess.run(command, capture_output=True, text=True, timeout=BROWSER_TIMEOUT)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout, console_messages(done.stderr)


def console_messages(stderr: str) -> list[str]:
    """The page's console messages (errors, uncaught exceptions, logs) in Chromium's log."""
    return _CONSOLE.findall(stderr)


def _rows_in_order(dom: str) -> list[tuple[str, str]]:
    """(label, class) of the ranked-list rows, in the order the DOM holds them."""
    rows = _Tags(dom).find("tr")
    return [(a["data-label"], a.get("class") or "") for a in rows if "data-label" in a]


def test_console_error_detection_works(tmp_path):
    """Negative control: a page with a deliberate error is caught by :func:`console_messages`."""
    broken = tmp_path / "broken.html"
    broken.write_text("<!DOCTYPE html><p>x</p><script>console.error('on purpose');"
                      "notDefinedAnywhere();</script>")
    _, messages = _browse(broken, tmp_path / "profile", "--dump-dom")
    assert "on purpose" in messages
    assert any(m.startswith("Uncaught ReferenceError") for m in messages)


def test_report_renders_in_a_browser(tmp_path):
    path = _report(tmp_path / "run")
    shot = tmp_path / "shot.png"
    _, messages = _browse(path, tmp_path / "profile", f"--screenshot={shot}",
                          "--window-size=1200,2000")
    assert messages == []
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert pixels.shape == (2000, 1200, 3)
    assert (pixels.min(axis=2) < 200).mean() > 0.02  # not blank: text, plots, pictures
    blue = np.abs(pixels - (0x1F, 0x5F, 0xA8)).max(axis=2) < 20  # histogram bars, plain CMC
    assert blue.sum() > 500

    dom, messages = _browse(path, tmp_path / "profile", "--dump-dom")
    assert messages == []
    tags = _Tags(dom)
    body = tags.find("body")[0]
    assert body.get("data-ready") == "1" and "data-js-errors" not in body
    assert body["data-images-total"] == "3" and body["data-images-loaded"] == "3"
    for tag, element in (("table", "metrics"), ("svg", "cmc"), ("svg", "ap-histogram")):
        assert len(tags.find(tag, id=element)) == 1
    assert [a["data-metric"] for a in tags.find("td") if "data-metric" in a][:5] == [
        "rank1", "rank5", "rank10", "mAP", "mINP"]
    assert tags.find("table", id="ranked")[0]["data-shown"] == "3"


def test_linked_pictures_with_odd_names_load(tmp_path):
    out = tmp_path / "run"
    facts = _ranked_facts(out, names=(f"0001_c1s1_{WEIRD}", "0002_c2s1 #?%20x", "0003_c3s1_broken"))
    # Negative control of the loaded count: a picture that does not decode is not counted.
    (out / facts[2]["picture"]).write_bytes(b"not a png")
    page = _report(out, facts=facts, embed_images=False)
    dom, messages = _browse(page, tmp_path / "profile", "--dump-dom")
    body = _Tags(dom).find("body")[0]
    assert messages == []
    assert body["data-images-total"] == "3" and body["data-images-loaded"] == "2"


def test_sort_and_filter_from_the_link(tmp_path):
    """The fragment drives the header's click handler and the filter boxes, as a user would."""
    path = _report(tmp_path / "run")
    dom, messages = _browse(path, tmp_path / "profile", "--dump-dom", fragment="#sort=ap&dir=desc")
    assert messages == []
    # Descending AP; the query without a true match (no AP) sorts last either way.
    assert [label for label, _ in _rows_in_order(dom)] == ["best01", "worst01", "query"]
    assert _Tags(dom).find("th", **{"data-key": "ap"})[0]["aria-sort"] == "descending"

    dom, _ = _browse(path, tmp_path / "profile", "--dump-dom", fragment="#sort=ap&ap_below=50")
    assert _rows_in_order(dom) == [("worst01", ""), ("best01", "hidden"), ("query", "hidden")]
    tags = _Tags(dom)
    assert tags.find("table", id="ranked")[0]["data-shown"] == "1"
    assert re.search(r'<span id="shown">([^<]*)<', dom).group(1) == "1 of 3 shown"

    dom, _ = _browse(path, tmp_path / "profile", "--dump-dom", fragment="#q=C2S1")
    assert [c for label, c in _rows_in_order(dom) if label == "best01"] == [""]
    assert _Tags(dom).find("table", id="ranked")[0]["data-shown"] == "1"


def test_cameras_named_by_numbers_sort_as_numbers(tmp_path):
    out = tmp_path / "run"
    facts = _ranked_facts(out)
    for f, camera in zip(facts, ("10", "9", "2")):
        f["camera"] = camera  # the dataset's names, which evaluate.py may pass beside camid
    dom, messages = _browse(_report(out, facts=facts), tmp_path / "profile", "--dump-dom",
                            fragment="#sort=camera")
    assert messages == []
    assert [label for label, _ in _rows_in_order(dom)] == ["query", "best01", "worst01"]
