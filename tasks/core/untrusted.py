"""Reading what synthaug did not write itself (docs/trust.md): JSON files of a registry or a pretrained folder,
class names that become folder names, and checkpoints (``model.init_from``, a published generator).

Every function here checks at the boundary and ends a problem in one ``UserError`` line naming the file, the field
and the fix; none lets a raw exception (a JSON decoder's, a recursion limit, torch's multi-line advice) through.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from synthaug.tasks.core.errors import UserError
from synthaug.tasks.core.labels import colliding_labels
from synthaug.tasks.core.sources.readers import label_problem

MAX_JSON_BYTES = 16 << 20  # a generator.json, a pretrained folder's config.json or metadata.json: KB in practice


def read_json(path: Path, *, fix: str, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """The JSON value in ``path``, read within ``max_bytes``; UserError naming the file and ``fix`` otherwise (not
    UTF-8, not JSON, nested deeper than Python's recursion limit)."""
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise UserError(f"{path}: {size} bytes, more than the {max_bytes} a JSON file here may have; {fix}")
        return json.loads(path.read_bytes().decode("utf-8"))
    except UserError:
        raise
    except FileNotFoundError:
        raise UserError(f"{path}: not found; {fix}") from None
    except RecursionError:
        raise UserError(f"{path}: JSON nested too deeply to read; {fix}") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"{path}: not readable JSON ({type(exc).__name__}: {str(exc)[:120]}); {fix}") from None


def read_json_object(path: Path, *, fix: str) -> dict[str, Any]:
    """``read_json``, which must give a JSON object."""
    value = read_json(path, fix=fix)
    if not isinstance(value, dict):
        raise UserError(f"{path}: expected a JSON object, got {type(value).__name__}; {fix}")
    return value


def class_names_problem(names: Any) -> str | None:
    """Why ``names`` cannot be the class names of a model whose images are written to ``images/<name>/``: not a
    list of strings, a name that fails the label rules (``label_problem``: a path separator, ``..``, a control
    character, ...), or two names that collide as folders (``colliding_labels``). None when they can."""
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        return f"class_names must be a list of strings, got {str(names)[:60]}"
    for name in names:
        problem = label_problem(name)
        if problem is not None:
            return problem
    if len(set(names)) != len(names):
        return "class_names lists a class twice"
    pairs = colliding_labels(names)
    if pairs:
        a, b = pairs[0]
        return f"class names {a!r} and {b!r} differ only in case, Unicode form or look-alike letters"
    return None


def check_class_names(names: Any, where: Path | str, fix: str) -> list[str]:
    """``names`` when ``class_names_problem`` finds nothing; else UserError naming ``where`` and ``fix``."""
    problem = class_names_problem(names)
    if problem is not None:
        raise UserError(f"{where}: {problem}; {fix}")
    return list(names)


def checked_checkpoint_meta(directory: Path, fix: str) -> dict[str, Any]:
    """A checkpoint's ``config.json`` (``models.training.read_checkpoint_meta``: family, config, image shape and
    class count bounded) with its class names checked as folder names; UserError otherwise."""
    from synthaug.models.training import CONFIG_FILE, CheckpointError, read_checkpoint_meta

    try:
        meta = read_checkpoint_meta(directory)
    except CheckpointError as exc:
        raise UserError(f"{exc}; {fix}") from None
    check_class_names(meta["class_names"], directory / CONFIG_FILE, fix)
    return meta


def load_checked(directory: Path, device: Any, fix: str, config_override: Any | None = None) -> tuple[Any, dict, dict]:
    """``models.training.load_checkpoint`` of an untrusted checkpoint (sized, tensors checked, never unpickled)
    after ``checked_checkpoint_meta``; (model, meta, state), or UserError naming the file and ``fix``."""
    from synthaug.models.training import CheckpointError, load_checkpoint

    checked_checkpoint_meta(directory, fix)
    try:
        return load_checkpoint(directory, device, config_override)
    except CheckpointError as exc:
        raise UserError(f"{exc}; {fix}") from None
