"""Our guest kernels' config fragments: the default one and `--kernel debug`'s."""

from __future__ import annotations

from vfio_scenario.testbed.assets import (
    DEBUG_FRAGMENT,
    FRAGMENT,
    fragment_options,
    fragment_text,
    missing_options,
)


def test_debug_is_the_default_fragment_then_its_own() -> None:
    assert fragment_text("default") == FRAGMENT.read_text()
    assert fragment_text("debug") == FRAGMENT.read_text() + "\n" + DEBUG_FRAGMENT.read_text()


def test_a_later_line_overrides_an_earlier_one() -> None:
    wanted, off = fragment_options("CONFIG_A=y\n# CONFIG_B is not set\n# CONFIG_A is not set\n"
                                   "CONFIG_B=y\n")
    assert (wanted, off) == ({"CONFIG_B": "y"}, ["CONFIG_A"])
    # the debug kernel switches SLUB_TINY (tinyconfig's) off for KASAN
    wanted, off = fragment_options(fragment_text("debug"))
    assert "CONFIG_SLUB_TINY" in off and wanted["CONFIG_KASAN"] == "y"
    assert missing_options("CONFIG_A=y\n", "CONFIG_A=y\n# CONFIG_B is not set\n") == []
    assert missing_options("CONFIG_B=y\n", "# CONFIG_B is not set\n") == ["CONFIG_B (must be off)"]


def test_the_default_kernel_has_what_the_watch_and_its_tests_use() -> None:
    wanted, _ = fragment_options(fragment_text("default"))
    for option in ("CONFIG_KALLSYMS", "CONFIG_DEBUG_INFO_REDUCED", "CONFIG_DETECT_HUNG_TASK",
                   "CONFIG_LKDTM", "CONFIG_DEBUG_FS"):
        assert wanted[option] == "y", option
    debug, _ = fragment_options(fragment_text("debug"))
    for option in ("CONFIG_PROVE_LOCKING", "CONFIG_PROVE_RCU", "CONFIG_DEBUG_ATOMIC_SLEEP",
                   "CONFIG_KASAN_GENERIC", "CONFIG_KASAN_INLINE", "CONFIG_UBSAN",
                   "CONFIG_DEBUG_KMEMLEAK", "CONFIG_DEBUG_LIST", "CONFIG_DMA_API_DEBUG",
                   "CONFIG_LKDTM"):
        assert debug[option] == "y", option
