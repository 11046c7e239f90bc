"""validate / list / schema / run / devices handlers."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: "argparse._SubParsersAction[Any]") -> None:
    """Add the scenario commands to the main parser."""
