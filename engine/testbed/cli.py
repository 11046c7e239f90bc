"""Command-line registration for the testbed layer (filled in by its owner)."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add this layer's subcommands to the main parser."""
