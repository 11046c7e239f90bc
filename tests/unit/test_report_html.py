"""The HTML report: self-contained, correct counts, timelines, filtering in a real browser."""

from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from vfio_scenario.report.html import LOG_LIMIT, html_document
from vfio_scenario.results import CaseResult, Outcome, RunResult

from tests.helpers.reports import nasty_text, sample_run

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (scripts/install-host-packages)")


class Page(HTMLParser):
    """Texts of elements with an id, and the attributes of every case row."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.by_id: dict[str, str] = {}
        self.rows: list[dict[str, str | None]] = []
        self.files: list[dict[str, str | None]] = []
        self._open: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "details" and "case" in (a.get("class") or ""):
            self.rows.append(a)
        if tag == "details" and a.get("class") == "file":
            self.files.append(a)
        if a.get("id"):
            self.by_id[str(a["id"])] = ""
            self._open.append(str(a["id"]))
        elif tag in ("span", "div", "p"):
            self._open.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("span", "div", "p") and self._open:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        for key in self._open:
            if key:
                self.by_id[key] += data


def browse(path: Path, fragment: str, profile: Path) -> Page:
    """The DOM after the page's scripts ran, as headless Chromium dumps it."""
    assert CHROMIUM is not None
    result = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-first-run", f"--user-data-dir={profile}", "--dump-dom",
         f"{path.resolve().as_uri()}{fragment}"],
        capture_output=True, text=True, timeout=120, check=True)
    assert 'data-ready="1"' in result.stdout, "the page's script did not finish"
    return Page(result.stdout)


def test_page_is_self_contained() -> None:
    run = sample_run()
    run.cases[1].message = "see https://example.invalid/x"  # user text may hold URLs …
    text = html_document(run)
    assert not re.search(r"""(src|href|url)\s*[=(]\s*["']?\s*(https?:)?//""", text, re.IGNORECASE)
    assert "<link" not in text and "<script src" not in text and "@import" not in text
    assert "<style>" in text and "<script>" in text


def test_timeline_bars_are_proportional_to_step_durations() -> None:
    text = html_document(sample_run())
    timelines = re.findall(r'<div class="timeline".*?</div>', text, re.DOTALL)
    assert len(timelines) == 4  # the skipped case ran no step
    widths = [(cls, float(w)) for cls, w in
              re.findall(r'<span class="bg-(\w+)" style="width: ([0-9.]+)%"', timelines[1])]
    durations = [0.004, 0.12, 0.002, 0.0005, 0.0002]
    assert [c for c, _ in widths] == ["pass", "pass", "pass", "fail", "pass"]
    for (_, w), d in zip(widths, durations, strict=True):
        assert w == pytest.approx(100 * d / sum(durations), abs=0.001)


def test_static_counts_and_rows() -> None:
    page = Page(html_document(sample_run()))
    assert {k: page.by_id[f"count-{k}"] for k in ("pass", "fail", "skip", "error")} == \
        {"pass": "2", "fail": "1", "skip": "1", "error": "1"}
    assert [r["data-outcome"] for r in page.rows] == ["pass", "fail", "skip", "pass", "error"]


@needs_chromium
def test_browser_shows_counts_and_filtering_hides_rows(tmp_path: Path) -> None:
    path = tmp_path / "report.html"
    run = sample_run()
    run.cases[1].steps[3].message += nasty_text()
    path.write_text(html_document(run), encoding="utf-8")

    page = browse(path, "", tmp_path / "profile1")
    assert (page.by_id["total"], page.by_id["shown"]) == ("5", "5")
    assert {k: page.by_id[f"count-{k}"] for k in ("pass", "fail", "skip", "error")} == \
        {"pass": "2", "fail": "1", "skip": "1", "error": "1"}
    assert [r.get("hidden") for r in page.rows] == [None] * 5
    assert [r.get("open") is not None for r in page.rows] == [False, True, False, False, True]

    page = browse(path, "#outcome=fail,error", tmp_path / "profile2")
    assert page.by_id["shown"] == "2"
    assert [(r["data-outcome"], r.get("hidden") is not None) for r in page.rows] == [
        ("pass", True), ("fail", False), ("skip", True), ("pass", True), ("error", False)]

    page = browse(path, "#outcome=pass", tmp_path / "profile3")
    assert page.by_id["shown"] == "2"
    assert [r["data-outcome"] for r in page.rows if r.get("hidden") is None] == ["pass", "pass"]

    page = browse(path, "#outcome=pass,fail,skip,error&q=MAP-unmap%20size=4096%20type1",
                  tmp_path / "profile4")
    assert page.by_id["shown"] == "2"
    assert [r["data-id"] for r in page.rows if r.get("hidden") is None] == [
        "scenarios/dma/map.yaml::map-unmap[iommu_mode=vfio_type1v2_iommu,size=4096]",
        "scenarios/dma/map.yaml::map-unmap[iommu_mode=vfio_type1_iommu,size=4096]"]


@needs_chromium
def test_browser_opens_an_empty_report(tmp_path: Path) -> None:
    path = tmp_path / "empty.html"
    path.write_text(html_document(RunResult()), encoding="utf-8")
    page = browse(path, "", tmp_path / "profile")
    assert (page.by_id["total"], page.by_id["shown"]) == ("0", "0")
    assert page.by_id["empty"] == "No case ran."
    assert page.rows == []


def test_hostile_text_is_escaped() -> None:
    run = sample_run()
    run.cases[1].steps[3].message = "<script>alert(1)</script>" + nasty_text()
    run.cases[4].log = "</pre><b>x</b>\x00\x1b[31m"
    text = html_document(run)
    assert "<script>alert(1)" not in text and "&lt;script&gt;alert(1)" in text
    assert "&lt;/pre&gt;&lt;b&gt;x&lt;/b&gt;\\x00\\x1b[31m" in text
    assert "\x00" not in text and "\ud800" not in text
    text.encode("utf-8")  # no lone surrogate left


def test_a_10_mb_log_shows_its_tail_only() -> None:
    run = sample_run()
    run.cases[4].log = "y" * (10 * 1024 * 1024) + "\nTHE END"
    text = html_document(run)
    assert "THE END" in text
    assert len(text) < LOG_LIMIT + 64 * 1024


class Parts(HTMLParser):
    """The summary blocks, file sections and scenario grids of a page."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.grids: list[dict[str, Any]] = []  # caption, header, rows of cells
        self.links: dict[str, list[tuple[str, str]]] = {}  # block id -> (href, text)
        self.bars: list[tuple[str, str]] = []  # (class, style) of the duration chart
        self._block = ""
        self._cell: list[str] | None = None
        self._text: list[str] | None = None
        self._href = ""
        self._where = ""
        self._in_grid = False
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "details" and "summary-block" in a.get("class", ""):
            self._block = a["id"]
        if tag == "table":
            self._in_grid = a.get("class") == "grid"
            if self._in_grid:
                self.grids.append({"caption": "", "rows": []})
        if self._in_grid and tag == "caption":
            self._where = "caption"
        if self._in_grid and tag == "tr":
            self.grids[-1]["rows"].append([])
        if self._in_grid and tag in ("td", "th"):
            self._cell = [a.get("class", "")]
        if self._cell is not None and tag == "a":
            self._cell.append(a["href"])
        if tag == "a" and self._block:
            self._href, self._text = a["href"], []
        if tag == "span" and "bar" in a.get("class", ""):
            self.bars.append((a["class"], a["style"]))

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.grids[-1]["rows"][-1].append(tuple(self._cell))
            self._cell = None
        if tag == "caption":
            self._where = ""
        if tag == "a" and self._text is not None:
            self.links.setdefault(self._block, []).append((self._href, "".join(self._text)))
            self._text = None
        if tag == "details" and self._block:
            self._block = ""
        if tag == "table":
            self._cell, self._in_grid = None, False

    def handle_data(self, data: str) -> None:
        if self._where == "caption":
            self.grids[-1]["caption"] += data
        if self._cell is not None and data.strip():
            self._cell.append(data.strip())
        if self._text is not None:
            self._text.append(data)


def test_cases_are_grouped_by_file_with_a_grid_per_scenario() -> None:
    text = html_document(sample_run())
    page, parts = Page(text), Parts(text)
    assert [(f["data-file"], "open" in f) for f in page.files] == [
        ("scenarios/dma/map.yaml", True), ("scenarios/driver/memcpy.yaml", True)]
    assert [r["id"] for r in page.rows] == [f"case-{i}" for i in range(1, 6)]
    assert [g["caption"] for g in parts.grids] == ["map-unmap", "driver-memcpy"]
    assert parts.grids[0]["rows"] == [
        [("",), ("", "iommufd"), ("", "vfio_type1v2_iommu"), ("", "vfio_type1_iommu")],
        [("", "size=4096"), ("cell bg-pass", "#case-1", "PASS"),
         ("cell bg-fail", "#case-2", "FAIL"), ("cell bg-skip", "#case-3", "SKIP")]]
    assert parts.grids[1]["rows"] == [
        [("",), ("", "iommufd")],
        [("", "size=256"), ("cell bg-pass", "#case-4", "PASS")],
        [("", "size=4096"), ("cell bg-error", "#case-5", "ERROR")]]
    # a file whose cases all passed stays folded; a mode with no case is an empty cell
    run = sample_run()
    run.cases = [run.cases[0], run.cases[2], run.cases[3]]
    run.cases[1].params = {"iommu_mode": "vfio_type1_iommu", "size": 8192}
    run.cases[2].params = {}
    text = html_document(run)
    page, parts = Page(text), Parts(text)
    assert ["open" in f for f in page.files] == [False, False]
    assert parts.grids[0]["rows"][1:] == [
        [("", "size=4096"), ("cell bg-pass", "#case-1", "PASS"), ("none", "\u2013")],
        [("", "size=8192"), ("none", "\u2013"), ("cell bg-skip", "#case-2", "SKIP")]]
    assert parts.grids[1]["rows"] == [
        [("",), ("", "no IOMMU mode")],
        [("", "(no other matrix values)"), ("cell bg-pass", "#case-3", "PASS")]]


def test_summary_has_splats_skip_reasons_and_the_slowest_cases() -> None:
    run = sample_run()
    run.cases[4].kernel_splats = [
        {"kind": "warning", "title": "WARNING: drivers/vfio/x.c:12", "text": "", "allowed": False},
        {"kind": "bug", "title": "declared", "text": "", "allowed": True}]
    run.cases.append(CaseResult(case_id="scenarios/x.yaml::y", file="scenarios/x.yaml",
                                scenario="y", outcome=Outcome.SKIP,
                                message=run.cases[2].message))
    parts = Parts(html_document(run))
    assert parts.links["splats"] == [
        ("#case-5", "scenarios/driver/memcpy.yaml::driver-memcpy[iommu_mode=iommufd,size=4096]")]
    assert parts.links["skips"] == [("#case-3", run.cases[2].message)]
    assert "2 skipped case(s), 1 reason(s)" in html_document(run)
    slow = parts.links["slowest"]
    assert [href for href, _ in slow] == ["#case-5", "#case-1", "#case-2", "#case-4", "#case-3",
                                          "#case-6"]
    widths = [float(style.split(":")[1].rstrip("%")) for _, style in parts.bars]
    durations = sorted((c.duration for c in run.cases), reverse=True)
    assert widths == pytest.approx([100 * d / durations[0] for d in durations], abs=0.01)
    assert parts.bars[0][0] == "bar bg-error"
    many = RunResult(cases=[CaseResult(case_id=f"f.yaml::c{i}", file="f.yaml", scenario="c",
                                       outcome=Outcome.PASS, duration=i) for i in range(40)])
    slow = Parts(html_document(many)).links["slowest"]
    assert [text for _, text in slow] == [f"f.yaml c{i}" for i in range(39, 24, -1)]  # 15


@needs_chromium
def test_browser_hides_files_without_shown_cases_unfolds_the_others_and_a_linked_case(
        tmp_path: Path) -> None:
    path = tmp_path / "report.html"
    run = sample_run()
    run.cases[1].outcome = Outcome.PASS  # no file unfolded by itself now
    run.cases[4].outcome = Outcome.PASS
    path.write_text(html_document(run), encoding="utf-8")
    page = browse(path, "#outcome=skip", tmp_path / "profile1")
    assert [(f["data-file"], f.get("hidden") is not None) for f in page.files] == [
        ("scenarios/dma/map.yaml", False), ("scenarios/driver/memcpy.yaml", True)]
    assert [f.get("open") is not None for f in page.files] == [True, False]  # unfolded
    page = browse(path, "#case-4", tmp_path / "profile2")
    assert [f.get("open") is not None for f in page.files] == [False, True]
    assert [r.get("open") is not None for r in page.rows] == [False] * 3 + [True, False]


@needs_chromium
def test_browser_renders_without_console_messages_and_a_screenshot(tmp_path: Path) -> None:
    """The page loads in headless Chromium with nothing on the console (Chromium prints
    every console message, errors included, as `CONSOLE` lines), and a screenshot is
    made; a page with a script error shows that the check sees one."""
    def shoot(page: Path, name: str) -> tuple[str, bytes]:
        png = tmp_path / f"{name}.png"
        result = subprocess.run(
            [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / name}", "--enable-logging=stderr", "--v=0",
             f"--screenshot={png}", "--window-size=1200,900", page.resolve().as_uri()],
            capture_output=True, text=True, timeout=120, check=True)
        return result.stderr, png.read_bytes()

    run = sample_run()
    run.cases[1].steps[3].message += nasty_text()
    run.cases[4].kernel_splats = [{"kind": "warning", "title": "WARNING: x", "text": "",
                                   "allowed": False}]
    good = tmp_path / "report.html"
    good.write_text(html_document(run), encoding="utf-8")
    log, png = shoot(good, "good")
    assert ":CONSOLE" not in log, log
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
    bad = tmp_path / "bad.html"
    bad.write_text(html_document(run).replace("<script>", "<script>undefinedThing();", 1),
                   encoding="utf-8")
    log, _ = shoot(bad, "bad")
    assert ":CONSOLE" in log and "undefinedThing" in log


def test_the_readme_links_a_small_screenshot_of_the_library_report() -> None:
    """docs/library-report.png: headless Chromium's screenshot (1100 px wide) of the HTML
    report of a library run, linked from README.md and docs/reports.md; docs/ci.md is
    linked too."""
    import struct

    repo = Path(__file__).resolve().parents[2]
    readme = (repo / "README.md").read_text()
    assert "(docs/library-report.png)" in readme and "(docs/ci.md)" in readme
    assert "(library-report.png)" in (repo / "docs" / "reports.md").read_text()
    png = (repo / "docs" / "library-report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
    width, height = struct.unpack(">II", png[16:24])
    assert (width, height) == (1100, 1500)
    assert len(png) < 300_000
