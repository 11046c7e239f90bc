"""Limits of tests that time real work, scaled by how busy the machine is."""

from __future__ import annotations

import os


def load_multiplier() -> float:
    """How many times longer than on an idle machine work may take now: the last minute's
    load average per CPU, at least 1 (a machine shared by several test runs often has
    five to ten runnable tasks per CPU)."""
    return max(1.0, os.getloadavg()[0] / (os.cpu_count() or 1))
