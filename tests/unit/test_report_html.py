"""The HTML report: self-contained, correct counts, timelines, filtering in a real browser."""

from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from vfio_scenario.report.html import LOG_LIMIT, html_document
from vfio_scenario.results import RunResult

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
        self._open: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "details" and "case" in (a.get("class") or ""):
            self.rows.append(a)
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
