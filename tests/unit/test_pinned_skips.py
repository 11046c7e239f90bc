"""The pinned-skip check of the library run (tests/helpers/skips.py): what it refuses,
and that the committed list matches the library's cases."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import skips

IDS = ["a.yaml::x[iommu_mode=iommufd]", "a.yaml::x[iommu_mode=vfio_type1_iommu]", "b.yaml::y"]
PINNED = {"skips": {"default": {"a.yaml::x[iommu_mode=iommufd]": "IOMMU mode iommufd unavailable:"},
                    "debian": {}},
          "case_counts": {"a.yaml": 2, "b.yaml": 1}}
REASON = "IOMMU mode iommufd unavailable: /dev/iommu does not exist"


def results(**outcomes: str) -> list[tuple[str, str, str]]:
    out = {cid: ("pass", "") for cid in IDS}
    out[IDS[0]] = ("skip", REASON)
    for i, outcome in outcomes.items():
        cid = IDS[int(i[1:])]
        out[cid] = (outcome, "a reason" if outcome == "skip" else "")
    return [(cid, o, m) for cid, (o, m) in out.items()]


def test_a_run_as_pinned_passes() -> None:
    assert skips.check(results(), "default", IDS, PINNED) == []


def test_an_unlisted_skip_fails() -> None:
    assert skips.check(results(c2="skip"), "default", IDS, PINNED) == [
        "skip not on the pinned list for kernel default: b.yaml::y: a reason"]


def test_a_listed_case_that_runs_is_a_stale_entry() -> None:
    assert skips.check(results(c0="pass"), "default", IDS, PINNED) == [
        f"pinned skip now pass (stale entry, regenerate the list): {IDS[0]}"]


def test_a_changed_reason_fails() -> None:
    [problem] = skips.check(results(c0="skip"), "default", IDS, PINNED)
    assert problem.startswith(f"skip reason changed for {IDS[0]}")


def test_another_kernel_has_its_own_list() -> None:
    assert skips.check(results(), "debian", IDS, PINNED) == [
        f"skip not on the pinned list for kernel debian: {IDS[0]}: {REASON}"]


def test_a_changed_case_count_fails() -> None:
    assert skips.check(results(), "default", [*IDS, "b.yaml::z"], PINNED) == [
        "case count of b.yaml is 2, pinned 1"]
    assert skips.check(results(), "default", IDS[:2], PINNED)[-1] == \
        "case count of b.yaml is 0, pinned 1"


def test_regenerating_from_a_json_report_round_trips(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    report = {"cases": [{"case_id": c, "outcome": o, "message": m} for c, o, m in results()]}
    again = skips.regenerate(report, "default", IDS, {"skips": {"debian": {"q": "r"}}})
    assert again == {"skips": {"default": {IDS[0]: REASON},
                               "debian": {"q": "r"}},
                     "case_counts": {"a.yaml": 2, "b.yaml": 1}}
    pinned_file = tmp_path / "expected-skips.yaml"
    pinned_file.write_text(skips.dump(again))
    monkeypatch.setattr(skips, "PINNED", pinned_file)
    assert skips.load() == again
    assert skips.check(results(), "default", IDS) == []
    path = tmp_path / "run.json"
    path.write_text(json.dumps(report))
    assert skips.main([str(path), "--kernel", "default"]) == 2  # not the whole library


def test_the_committed_list_has_both_kernels_and_every_file_count() -> None:
    """Its content is checked against a real run by tests/testbed/test_run_library.py
    (case ids and counts change with the library; the integrator regenerates it)."""
    pinned = skips.load()
    assert set(pinned["skips"]) == set(skips.KERNELS)
    assert all(isinstance(n, int) and n > 0 for n in pinned["case_counts"].values())
    assert all(cid.split("::")[0] in pinned["case_counts"]
               for kernel in skips.KERNELS for cid in pinned["skips"][kernel])


def test_a_reason_is_pinned_by_its_first_100_characters() -> None:
    long = ("0 suitable device(s) of 1 needed: 0000:00:03.0 (1234:11e8): no dma_buf_mmap: "
            "mmap of a DMABUF: EINVAL; 0000:00:04.0 (1234:11e8): no dma_buf_mmap")
    assert skips.reason_prefix(long) == long[:100]
    assert skips.reason_prefix("two\nlines  here") == "two lines here"
