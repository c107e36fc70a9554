"""``docs/params.md``: every key of params.yaml with its type, default and meaning, generated from the params classes.

The descriptions are the ``name: description`` lines of each class's docstring (a pydantic section's, below its
summary; a config dataclass's ``Args:`` block); a field without one, or a line naming no field, is an error, so the
reference cannot fall silently behind the code. Types come from the annotations, bounds from the pydantic ``Field``
(``ge``/``gt``/``le``/``lt``), defaults from ``Params()``. ``synthaug params-doc --write`` regenerates the file; a test
checks the committed one is current. Imports no torch and no pandas (the CLI loads it on demand).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Union

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from synthaug.flows.params import Params
from synthaug.tasks.core.render import CODE_SPAN, md_text, render

DOC_PATH = "docs/params.md"


INTRO = (
    "Every knob of the pipeline, with its default: each step reads its section, validated into one typed `Params` "
    "(`flows/params.py`) before anything runs. `params.yaml` holds the project's choices, the keys that differ from "
    "these defaults or that its runs are about; a key left out keeps the default below, and `synthaug params` prints "
    "every key as resolved. Any key can be overridden for one run with `-S section.key=value` (nested keys with more "
    "dots, e.g. `-S model.diffusion.steps=200`; the value is read as YAML), as `dvc exp run -S` does (there "
    "`-S ++section.key=value` for a key params.yaml does not have yet). Unknown keys, in the file or in an override, "
    "are refused with the keys allowed there; a value out of its type or bounds is refused naming the key.")

_BOUNDS = (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))  # pydantic Field bounds (annotated_types)

_ENTRY = re.compile(r"(?P<names>[A-Za-z_]\w*(?:, [A-Za-z_]\w*)*): (?P<text>\S.*)")



@dataclass(frozen=True)
class Row:
    """One key of a table: dotted key, rendered type (with bounds), default (JSON), description."""

    key: str
    type: str
    default: str
    description: str


@dataclass(frozen=True)
class Block:
    """A section (``##``) or a nested section (``###``): its keys, then its nested sections."""

    key: str
    cls: type
    summary: str
    description: str  # the parent class's line for this field; empty for a top-level section
    rows: list[Row] = field(default_factory=list)
    nested: list[Block] = field(default_factory=list)


def params_reference(root: type[BaseModel] = Params) -> str:
    """The Markdown reference of ``root`` (``Params``); ValueError listing every field without a description line
    and every docstring line naming no field."""
    problems: list[str] = []
    blocks = [_block(name, annotation, "", default, problems)
              for name, annotation, _, default in _fields(root, root().model_dump(mode="json"))]
    if problems:
        raise ValueError("params docstrings out of step with the fields (add or fix the `name: description` line in "
                         "the class docstring; a dataclass's goes in its `Args:` block):\n  " + "\n  ".join(problems))
    text = render("params_reference.md.j2", intro=INTRO, blocks=[_view(block, top=True) for block in blocks])
    return text.rstrip("\n") + "\n"


def _view(block: Block, *, top: bool = False) -> dict[str, Any]:
    """A block as the template lays it out: every text already Markdown (the table cells escaped by the template)."""
    description = block.description[:1].upper() + block.description[1:]
    return {"key": block.key, "class_name": block.cls.__name__, "summary": _text(block.summary),
            "description": _text(description) if description and not top else "",
            "rows": [{"key": r.key, "type": r.type, "default": r.default, "description": _markdown(r.description)}
                     for r in block.rows],
            "nested": [_view(nested) for nested in block.nested]}


def _block(key: str, cls: type, description: str, defaults: dict[str, Any], problems: list[str]) -> Block:
    described = _descriptions(cls, key, problems)
    block = Block(key=key, cls=cls, summary=_summary(cls), description=description)
    for name, annotation, info, default in _fields(cls, defaults):
        dotted = f"{key}.{name}"
        text = described.get(name, "")
        if not text:
            problems.append(f"{dotted}: no description ({_where(cls)})")
        if _is_section(annotation):
            block.nested.append(_block(dotted, annotation, text, default, problems))
        else:
            block.rows.append(Row(dotted, _type_cell(annotation, info), f"`{json.dumps(default)}`", text))
    return block


def _fields(cls: type, defaults: dict[str, Any] | None = None) -> list[tuple[str, Any, FieldInfo | None, Any]]:
    """(name, annotation, pydantic FieldInfo or None, default from ``defaults``) per field, in declaration order."""
    defaults = defaults or {}
    if issubclass(cls, BaseModel):
        return [(name, info.annotation, info, defaults.get(name)) for name, info in cls.model_fields.items()]
    hints = typing.get_type_hints(cls)
    return [(f.name, hints[f.name], None, defaults.get(f.name)) for f in dataclasses.fields(cls)]


def _is_section(annotation: Any) -> bool:
    return isinstance(annotation, type) and (issubclass(annotation, BaseModel) or dataclasses.is_dataclass(annotation))


def _where(cls: type) -> str:
    return f"{cls.__module__.removeprefix('synthaug.')}.{cls.__qualname__}"


def _summary(cls: type) -> str:
    """The first paragraph of the class docstring, on one line."""
    doc = inspect.cleandoc(cls.__doc__ or "")
    return " ".join(line.strip() for line in doc.split("\n\n", 1)[0].splitlines())


def _descriptions(cls: type, key: str, problems: list[str]) -> dict[str, str]:
    """Field name -> its docstring description: the class's own line first, then its base classes' (a family config
    inherits the lines of the fields it inherits)."""
    names = {name for name, *_ in _fields(cls)}
    found: dict[str, str] = {}
    for base in cls.__mro__:
        if base in BaseModel.__mro__ or not vars(base).get("__doc__"):  # pydantic's and object's are no params
            continue
        for name, text in _doc_entries(base.__doc__ or ""):
            if base is cls and name not in names:
                problems.append(f"{key}: the docstring describes {name!r}, which is no field ({_where(cls)})")
            found.setdefault(name, text)
    return found


def _doc_entries(doc: str) -> list[tuple[str, str]]:
    """The ``name: description`` entries of a docstring (``a, b: text`` describes both); continuation lines are
    indented deeper than their entry. A dataclass's sit in its ``Args:`` block, a section's below the summary."""
    lines = inspect.cleandoc(doc).splitlines()
    if "Args:" in (line.strip() for line in lines):
        start = next(i for i, line in enumerate(lines) if line.strip() == "Args:") + 1
        block = []
        for line in lines[start:]:
            if line.strip() and not line.startswith(" "):
                break
            block.append(line)
    else:
        block = lines[lines.index(""):] if "" in lines else []
    body = [line for line in block if line.strip()]
    if not body:
        return []
    base = len(body[0]) - len(body[0].lstrip())
    entries: list[tuple[list[str], list[str]]] = []
    for line in body:
        indent = len(line) - len(line.lstrip())
        match = _ENTRY.fullmatch(line.strip()) if indent == base else None
        if match:
            entries.append((match["names"].split(", "), [match["text"]]))
        elif indent > base and entries:
            entries[-1][1].append(line.strip())
        else:
            entries.append(([], []))  # a line that is no entry ends the one before it
    return [(name, _joined(parts)) for names, parts in entries for name in names]


def _joined(parts: list[str]) -> str:
    """Continuation lines joined with spaces; a word broken after a hyphen (``<publish.name>-``) joined without."""
    text = ""
    for part in parts:
        text += part if re.search(r"\S-$", text) else (" " + part if text else part)
    return text


def _type_cell(annotation: Any, info: FieldInfo | None) -> str:
    bounds = [f"{sign} {json.dumps(getattr(meta, attr))}" for meta in (info.metadata if info else [])
              for attr, sign in _BOUNDS if getattr(meta, attr, None) is not None]
    return f"`{_type_name(annotation)}`" + (f" (`{', '.join(bounds)}`)" if bounds else "")


def _type_name(annotation: Any) -> str:
    """An annotation as a reader of params.yaml thinks of it: ``float | None``, ``"auto" | "cpu"``, ``list[int]``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is None or annotation is type(None):
        return "None"
    if annotation is Any:
        return "Any"
    if origin is Literal:
        return " | ".join(json.dumps(arg) for arg in args)
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(arg) for arg in args)
    if (origin is tuple and len(args) == 2 and args[1] is Ellipsis) or (origin in (list, set, frozenset) and args):
        return f"list[{_type_name(args[0])}]"  # a YAML list (a config's tuple included)
    if origin in (tuple, dict):
        return f"{origin.__name__}[{', '.join(_type_name(arg) for arg in args)}]"
    if isinstance(annotation, type):
        return annotation.__name__
    raise TypeError(f"params_doc cannot render the type {annotation!r}; teach _type_name")


def _markdown(text: str) -> str:
    """Docstring text as Markdown: an RST literal (double backticks) becomes a code span (single ones)."""
    return "".join(f"`{part[2:-2]}`" if i % 2 and part.startswith("``") and "`" not in part[2:-2] else part
                    for i, part in enumerate(CODE_SPAN.split(text)))


def _text(text: str) -> str:
    return md_text(_markdown(text))


