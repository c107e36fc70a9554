"""``params.yaml`` -> one frozen, validated ``Params``; ``-S section.key=value`` overrides (as ``dvc exp run -S``)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator

from synthaug.tasks.core.errors import UserError, mask_secrets
from synthaug.tasks.core.params.assess import AssessParams
from synthaug.tasks.core.params.data import DataParams
from synthaug.tasks.core.params.evaluate import EvaluateParams
from synthaug.tasks.core.params.filter import FilterParams
from synthaug.tasks.core.params.generate import GenerateParams, sampling_config
from synthaug.tasks.core.params.model import ModelParams
from synthaug.tasks.core.params.plan import PlanParams
from synthaug.tasks.core.params.privacy import PrivacyParams
from synthaug.tasks.core.params.publish import PublishParams
from synthaug.tasks.core.params.runner import RunnerParams
from synthaug.tasks.core.params.tune import TuneParams

DEFAULT_PARAMS = Path("params.yaml")


class Params(BaseModel):
    """Every knob of the pipeline, one section per step."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    data: DataParams = DataParams()
    plan: PlanParams = PlanParams()
    model: ModelParams = ModelParams()
    generate: GenerateParams = GenerateParams()
    filter: FilterParams = FilterParams()
    evaluate: EvaluateParams = EvaluateParams()
    publish: PublishParams = PublishParams()
    privacy: PrivacyParams = PrivacyParams()
    runner: RunnerParams = RunnerParams()
    tune: TuneParams = TuneParams()
    assess: AssessParams = AssessParams()

    @field_validator("generate")
    @classmethod
    def _sampling_knobs(cls, value: GenerateParams, info: ValidationInfo) -> GenerateParams:
        """``generate.guidance_scale`` / ``sample_steps`` fit ``model.family`` (checked at load, not after training)."""
        knobs, model = value.sampling_knobs(), info.data.get("model")
        if knobs and model is not None:
            _check_sampling(model, knobs, f"set generate.{', '.join(knobs)} to null")
        return value

    @field_validator("tune")
    @classmethod
    def _tuned_guidance(cls, value: TuneParams, info: ValidationInfo) -> TuneParams:
        """Each ``tune.guidance`` candidate is a sampling guidance ``model.family`` accepts."""
        model = info.data.get("model")
        for guidance in value.guidance if model is not None else ():
            _check_sampling(model, {"guidance_scale": guidance},
                            "leave tune.guidance empty or fix the value", f"guidance {guidance:g}: ")
        return value


def _check_sampling(model: ModelParams, knobs: dict[str, Any], fix: str, where: str = "") -> None:
    """ValueError (``where``, the reason, ``fix``) unless ``model.family`` can sample with ``knobs``."""
    try:
        sampling_config(model.family, dataclasses.asdict(model.family_config()), knobs)
    except ValueError as exc:
        raise ValueError(f"{where}{exc}: {fix}") from None


class ParamsError(UserError):
    """params.yaml or an override is invalid; the message names the key and what is allowed."""


# Bounds checked before anything is parsed or validated: a params file is untrusted input (docs/trust.md).
MAX_PARAMS_BYTES = 1 << 20  # a params file; the repository's is about 6 KB
MAX_OVERRIDE_CHARS = 8192  # one ``-S key=value``
MAX_TEXT_CHARS = 4096  # one string value (a path, a URL, a name)
MAX_ITEMS = 1000  # one list or mapping
MAX_DEPTH = 16  # nesting of sections and values


def load_params(path: Path | str | None = DEFAULT_PARAMS, overrides: Sequence[str] = ()) -> Params:
    """Read ``path`` (missing default file: all defaults), apply overrides in order, validate.

    Bounded before parsing: a file above ``MAX_PARAMS_BYTES``, an override above ``MAX_OVERRIDE_CHARS`` and a YAML
    alias (``*name``: a few hundred bytes of aliases expand to billions of values) are refused; so are, before
    validation, a string above ``MAX_TEXT_CHARS``, a list or mapping above ``MAX_ITEMS`` entries and nesting deeper
    than ``MAX_DEPTH``.
    """
    raw: dict[str, Any] = {}
    origin = "defaults"
    if path is not None and Path(path).exists():
        origin = str(path)
        raw = _read_yaml(Path(path))
    elif path is not None and Path(path) != DEFAULT_PARAMS:
        raise ParamsError(f"{path}: params file not found")
    # On top of every default: a sub-section given in part (a file's `classifier: {steps: 100}`, an override
    # `-S evaluate.classifier.seed=1`) keeps the section's defaults for the rest, not the bare type's.
    _refuse_odd_scalars(raw, [], origin)  # sizes first: merging and validating would walk a huge value
    raw = _merged(Params().model_dump(mode="json"), raw)
    for override in overrides:
        apply_override(raw, override)
    _refuse_odd_scalars(raw, [], origin)
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise ParamsError("\n".join(_describe(err, origin) for err in exc.errors())) from None


class _NoAliasLoader(yaml.SafeLoader):
    """``yaml.safe_load``'s loader, refusing aliases (``*name``, ``<<: *name``) as it meets them."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise ParamsError(f"{self.name}: line {event.start_mark.line + 1}: YAML alias *{event.anchor} is not "
                              "allowed in a params file (aliases can expand a small file into billions of values); "
                              "write the value out")
        return super().compose_node(parent, index)


def _read_yaml(path: Path) -> dict[str, Any]:
    """The mapping in the params file ``path``, read within the bounds of ``load_params``."""
    try:
        size = path.stat().st_size
        if size > MAX_PARAMS_BYTES:
            raise ParamsError(f"{path}: {size} bytes; a params file may have at most {MAX_PARAMS_BYTES} (the "
                              "repository's has a few KB): is it the right file?")
        text = path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ParamsError(f"{path}: cannot read the params file ({exc}); give a UTF-8 YAML file") from None
    loader = _NoAliasLoader(text)
    loader.name = str(path)
    try:
        raw = loader.get_single_data() or {}
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML ({_clip(str(exc), 300)})") from None
    except RecursionError:
        raise ParamsError(f"{path}: values nested too deeply (at most {MAX_DEPTH} levels)") from None
    finally:
        loader.dispose()
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections (data, plan, ...), got {type(raw).__name__}")
    return raw


def _clip(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _merged(defaults: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """``given`` over ``defaults``, recursively where both hold a mapping; ``given`` wins everywhere else."""
    out = dict(defaults)
    for key, value in given.items():
        out[key] = (_merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict)
                    else value)
    return out


def apply_override(raw: dict[str, Any], text: str) -> None:
    """Set ``section.key[.sub]=value`` in ``raw``; the value is parsed as YAML (``3`` int, ``null`` None)."""
    if len(text) > MAX_OVERRIDE_CHARS:
        raise ParamsError(f"override {_clip(text, 60)!r}: {len(text)} characters; at most {MAX_OVERRIDE_CHARS}")
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ParamsError(f"override {text!r}: expected section.key=value, e.g. -S model.family=gan")
    *parents, leaf = key.strip().split(".")
    if not parents:
        raise ParamsError(f"override {text!r}: name a key inside a section, e.g. -S data.source=/path")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ParamsError(f"override {text!r}: {part!r} is a value, not a section")
    loader = _NoAliasLoader(value)
    loader.name = f"override {key.strip()}"
    try:
        node[leaf] = loader.get_single_data()
    except (yaml.YAMLError, RecursionError):
        node[leaf] = value
    finally:
        loader.dispose()
    # Paths like "a:b" or numbers-as-names stay strings where the field wants a string (pydantic coerces int->str no).
    if isinstance(node[leaf], int | float) and not isinstance(node[leaf], bool) and _is_str_field(key):
        node[leaf] = value


def _field_type(model: Any, name: str) -> Any:
    if isinstance(model, type) and issubclass(model, BaseModel):
        field = model.model_fields.get(name)
        return field.annotation if field else None
    if dataclasses.is_dataclass(model):
        return {f.name: f.type for f in dataclasses.fields(model)}.get(name)
    return None


def _allowed(model: Any) -> list[str]:
    if isinstance(model, type) and issubclass(model, BaseModel):
        return sorted(model.model_fields)
    if dataclasses.is_dataclass(model):
        return sorted(f.name for f in dataclasses.fields(model))
    return []


def _model_at(loc: Sequence[str | int]) -> Any:
    model: Any = Params
    for part in loc:
        model = _field_type(model, str(part))
    return model


def _is_str_field(dotted: str) -> bool:
    annotation = _model_at(dotted.split("."))
    return annotation is str or annotation == (str | None)


def _refuse_odd_scalars(node: Any, loc: list[str], origin: str) -> None:
    """Refuse what pydantic's lax mode would coerce silently: ``true``/``false`` for a number (``steps: true`` would
    be one step) and non-finite numbers (``.nan``, ``.inf``); and values above the size bounds of ``load_params``."""
    key = ".".join(loc)
    if len(loc) > MAX_DEPTH:
        raise ParamsError(f"{origin}: {_clip(key, 100)}: nested deeper than {MAX_DEPTH} levels")
    if isinstance(node, dict | list) and len(node) > MAX_ITEMS:
        raise ParamsError(f"{origin}: {_clip(key, 100)}: {len(node)} entries; at most {MAX_ITEMS}")
    if isinstance(node, dict):
        for name, value in node.items():
            _refuse_odd_scalars(value, [*loc, _clip(str(name), 100)], origin)
        return
    if isinstance(node, list):
        for i, value in enumerate(node):
            _refuse_odd_scalars(value, [*loc, str(i)], origin)
        return
    if isinstance(node, str) and len(node) > MAX_TEXT_CHARS:
        raise ParamsError(f"{origin}: {key}: a text of {len(node)} characters; at most {MAX_TEXT_CHARS}")
    if isinstance(node, bool):
        annotation = _model_at(loc) if loc else None
        names = (annotation if isinstance(annotation, str) else getattr(annotation, "__name__", None)
                 or repr(annotation).replace("typing.", ""))
        if annotation is not None and not any(t in f"{names} {annotation!r}" for t in ("bool", "Any")):  # a union too
            raise ParamsError(f"{origin}: {key}: expected {names}, got {str(node).lower()} (a YAML boolean)")
    elif isinstance(node, float) and not math.isfinite(node):
        raise ParamsError(f"{origin}: {key}: {node} is not a finite number")


def _describe(err: dict[str, Any], origin: str) -> str:
    loc = [str(p) for p in err["loc"]]
    key = ".".join(loc)
    if err["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
        allowed = ", ".join(_allowed(_model_at(loc[:-1])))
        return f"{origin}: unknown key '{key}'; allowed keys here: {allowed}"
    return mask_secrets(f"{origin}: {key}: {_clip(err['msg'], 500)} (got {_clip(repr(err.get('input')))})")


def dump_params(params: Params) -> str:
    """The resolved params as YAML, for outputs that must name exactly what produced them."""
    return yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False)
