"""The operation tables of docs/language.md, made from the operation models.

Each registered operation is a row of its area's table: its key, its arguments with
their defaults, the kind of handle it makes and its description (the model's
docstring). The tables sit between two markers in docs/language.md; rewrite them
after adding or changing an operation:

    python -m vfio_scenario.language.reference docs/language.md

and a unit test compares the committed tables with these.
"""

from __future__ import annotations

import sys
from typing import Any

from vfio_scenario.language.models import OPERATIONS, Op

BEGIN = ("<!-- operation tables: made from the models by "
         "`python -m vfio_scenario.language.reference docs/language.md`; do not edit -->")
END = "<!-- end of the operation tables -->"
NOTHING = "\N{EN DASH}"  # an empty cell


def description(cls: type[Op]) -> str:
    """The model's docstring, its paragraphs joined on one line."""
    return " ".join((cls.__doc__ or "").split())


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):  # every float argument is a duration
        return f"{value:g}s"
    return str(value)


def arguments(cls: type[Op]) -> str:
    """Its arguments as the table shows them: `name`, or `name` = default."""
    shown = []
    for name, info in cls.model_fields.items():
        key = info.alias or name
        default = None if info.is_required() else info.get_default(call_default_factory=True)
        if default is None or default == []:
            shown.append(f"`{key}`")
        else:
            shown.append(f"`{key}` = {_show(default)}")
    return ", ".join(shown) or NOTHING


def tables() -> str:
    """One table per area, in the order the operations were defined."""
    areas: dict[str, list[type[Op]]] = {}
    for cls in OPERATIONS.values():
        areas.setdefault(cls.area, []).append(cls)
    lines = []
    for area, models in areas.items():
        lines += [f"### {area}", "", "| operation | arguments (default) | makes | what it does |",
                  "|---|---|---|---|"]
        lines += [f"| `{cls.op}` | {arguments(cls)} | {cls.produces or NOTHING} | "
                  f"{description(cls).replace('|', chr(92) + '|')} |" for cls in models]
        lines.append("")
    return "\n".join(lines)


def with_tables(text: str) -> str:
    """`text` (docs/language.md) with the tables between its markers made anew."""
    start = text.index(BEGIN) + len(BEGIN)
    end = text.index(END, start)
    return f"{text[:start]}\n\n{tables()}\n{text[end:]}"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.stderr.write("usage: python -m vfio_scenario.language.reference docs/language.md\n")
        return 2
    with open(args[0], encoding="utf-8") as f:
        text = f.read()
    if BEGIN not in text or END not in text:
        sys.stderr.write(f"{args[0]}: no operation table markers ({BEGIN} … {END})\n")
        return 2
    new = with_tables(text)
    if new != text:
        with open(args[0], "w", encoding="utf-8") as f:
            f.write(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
