"""Typed experiment configs: YAML in, validated once at load, echoed into the run directory.

Every config section is a :class:`Section` (a pydantic model that forbids unknown keys). :func:`load_yaml`
turns pydantic's validation errors into one :class:`~reasonrec.errors.ConfigError` that names the file, the
dotted key, what was wrong and — for an unknown key — the closest valid key.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ConfigError

T = TypeVar("T", bound=BaseModel)


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, values are validated on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """Field names valid at the parent location of ``loc`` (best effort, for 'did you mean')."""
    cls: Any = model
    for part in loc[:-1]:
        if isinstance(part, int) or cls is None or not hasattr(cls, "model_fields"):
            cls = None
            break
        field = cls.model_fields.get(part)
        if field is None:
            cls = None
            break
        ann = field.annotation
        cls = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else _first_model(ann)
    return list(cls.model_fields) if cls is not None and hasattr(cls, "model_fields") else []


def _first_model(ann: Any) -> Any:
    for arg in getattr(ann, "__args__", ()) or ():
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def format_validation_error(err: ValidationError, model: type[BaseModel], source: str) -> str:
    lines = []
    for e in err.errors():
        loc = tuple(e["loc"])
        key = ".".join(str(p) for p in loc) or "<root>"
        if e["type"] == "extra_forbidden":
            valid = _fields_at(model, loc)
            close = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else (f"; valid keys: {', '.join(valid)}" if valid else "")
            lines.append(f"{source}: unknown key '{key}'{hint}")
        elif e["type"] == "missing":
            lines.append(f"{source}: missing required key '{key}'")
        else:
            lines.append(f"{source}: key '{key}': {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def validate(model: type[T], data: dict[str, Any], source: str = "<config>") -> T:
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, model, source)) from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def load_yaml(model: type[T], path: str | Path, overrides: dict[str, Any] | None = None) -> T:
    """Read ``path`` and validate it as ``model``; ``overrides`` are dotted keys (``data.seed``) set on top."""
    data = read_yaml(path)
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return validate(model, data, str(path))


def dump_yaml(cfg: BaseModel) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


class DataSection(Section):
    """Which dataset, where its raw files are, and which split protocol turns it into samples.

    Fields:
        dataset: one of ``ml-100k``, ``ml-1m``, ``amazon``, ``yelp``.
        category: Amazon category (e.g. ``Gift_Cards``, ``Books``); required for ``amazon``.
        data_dir: folder holding the raw files; default ``$REASONREC_DATA_DIR`` (the CLI's ``--data-dir`` wins).
        protocol: split protocol: ``collm`` (CoLLM/ThinkRec/TrackRec), ``kar`` (KAR/R4ec), ``starec``
            (STARec/LLMRank leave-one-out ranking), ``tallrec`` (TALLRec few-shot).
        seed: seed of every random choice the protocol makes (user sampling, negatives).
        options: protocol options (checked by the protocol; see ``reasonrec data stats --help``).
    """

    dataset: Literal["ml-100k", "ml-1m", "amazon", "yelp"] = "ml-100k"
    category: str | None = None
    data_dir: Path | None = None
    protocol: Literal["collm", "kar", "starec", "tallrec"] = "collm"
    seed: int = 0
    options: dict[str, Any] = Field(default_factory=dict)
