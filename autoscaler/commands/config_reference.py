"""The README's configuration reference, generated from the settings model so it cannot drift."""

from __future__ import annotations

import json
import types
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from autoscaler.config import Settings

START = "<!-- config-reference:start -->"
END = "<!-- config-reference:end -->"


def _type_name(annotation: Any) -> str:
    origin = get_origin(annotation)
    if origin is Annotated:  # a duration inside an optional: its base type, as for plain fields
        return _type_name(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(annotation))
    if origin is not None:
        args = ", ".join(_type_name(a) for a in get_args(annotation))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    if annotation is type(None):
        return "none"
    return getattr(annotation, "__name__", str(annotation)).replace("SecretStr", "secret")


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        value: Any = field.default_factory()  # type: ignore[call-arg]
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    if isinstance(value, BaseModel):
        return ""
    if isinstance(value, list) and value and isinstance(value[0], BaseModel):
        return ", ".join(str(getattr(v, "name", None) or getattr(v, "kind", "?")) for v in value)
    return json.dumps(value, default=str) if value is not None else "none"


def _rows(model: type[BaseModel], prefix: str) -> list[str]:
    rows = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            rows.extend(_rows(annotation, f"{key}."))
            continue
        env = "TDAS_" + key.upper().replace(".", "__")
        rows.append(
            f"| `{key}` | {_type_name(annotation)} | `{_default(field)}` | `{env}` | {field.description or ''} |"
        )
    return rows


def render_reference() -> str:
    lines = [
        "| key | type | default | environment | meaning |",
        "|---|---|---|---|---|",
        *_rows(Settings, ""),
    ]
    return "\n".join(lines)


def update_readme(path: str) -> bool:
    """Rewrite the reference between the markers; returns whether anything changed."""
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    updated = f"{head}{START}\n{render_reference()}\n{END}{tail}"
    if updated != text:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(updated)
    return updated != text


if __name__ == "__main__":
    import sys

    update_readme(sys.argv[1] if len(sys.argv) > 1 else "README.md")
