"""The JSON Schema of the scenario language, made from the pydantic models.

Every scalar also accepts a jinja2 template string (`"{{ iova + 0x1000 }}"`), since
templates render before validation; editors (yaml-language-server) see that too.
"""

from __future__ import annotations

import json
from functools import reduce
from operator import or_
from typing import Any

from pydantic import Field, create_model
from vfio_scenario.language.models import OPERATIONS, ForLoop, ScenarioHeader, StepCommon

TEMPLATE = {"type": "string", "pattern": r"\{\{.*\}\}|\{%.*%\}", "description": "jinja2 template"}
SCHEMA_ID = "https://vfio-scenario.invalid/schemas/scenario.schema.json"


def _step_models() -> list[Any]:
    models = []
    for op, cls in OPERATIONS.items():
        required = any(f.is_required() for f in cls.model_fields.values())
        annotation: Any = cls if required else cls | None
        fields: dict[str, Any] = {
            op: (annotation, Field(..., description=(cls.__doc__ or "").strip() or None))
        }
        models.append(create_model(f"{cls.__name__}Step", __base__=StepCommon,
                                   __doc__=f"A step running `{op}` ({cls.area}).", **fields))
    return models


def _add_loops(scenario: dict[str, Any], defs: dict[str, Any]) -> None:
    """A step is also a `for` step, whose `steps:` are steps again: the operations' union
    becomes `Step` (with `ForStep`), and the scenario's step lists refer to it."""
    operations = scenario["properties"]["steps"]["items"]
    loop = ForLoop.model_json_schema(by_alias=True, mode="validation")
    defs["ForLoop"] = loop
    defs["ForStep"] = {
        "type": "object",
        "title": "ForStep",
        "description": "A loop: its `steps` run once for each value of `for.var`.",
        "properties": {
            "for": {"$ref": "#/$defs/ForLoop"},
            "steps": {"type": "array", "items": {"$ref": "#/$defs/Step"}, "minItems": 1},
            "name": {"type": "string"},
            "when": {"type": "boolean"},
        },
        "required": ["for", "steps"],
        "additionalProperties": False,
    }
    defs["Step"] = {"anyOf": [*operations["anyOf"], {"$ref": "#/$defs/ForStep"}]}
    for key in ("steps", "teardown"):
        scenario["properties"][key]["items"] = {"$ref": "#/$defs/Step"}


def _allow_templates(node: Any) -> Any:
    if isinstance(node, dict):
        node = {k: _allow_templates(v) for k, v in node.items()}
        t = node.get("type")
        if t in ("integer", "number", "boolean") or (node.get("enum") and "type" not in node) \
                or "const" in node:
            return {"anyOf": [node, TEMPLATE]}
        return node
    if isinstance(node, list):
        return [_allow_templates(v) for v in node]
    return node


def json_schema() -> dict[str, Any]:
    step = reduce(or_, _step_models())
    scenario = create_model(
        "Scenario",
        __base__=ScenarioHeader,
        steps=(list[step], Field(min_length=1)),  # type: ignore[valid-type]
        teardown=(list[step], []),  # type: ignore[valid-type]
    )
    one = scenario.model_json_schema(by_alias=True, mode="validation")
    defs = one.pop("$defs", {})
    _add_loops(one, defs)
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "vfio-scenario scenario file",
        "description": "One scenario (a mapping) or a list of scenarios.",
        "oneOf": [{"$ref": "#/$defs/Scenario"},
                  {"type": "array", "items": {"$ref": "#/$defs/Scenario"}, "minItems": 1}],
        "$defs": {**defs, "Scenario": one},
    }
    return _allow_templates(schema)  # type: ignore[no-any-return]


def json_schema_text() -> str:
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"
