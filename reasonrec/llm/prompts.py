"""Prompt templates (``reasonrec/prompts/<task>/<domain>.yaml``) and their rendering from sample fields.

Each template file has ``source`` (the paper and figure/table it reproduces), ``domain``, an optional ``system``
message and a ``user`` message, both Jinja2 templates. Rendering is strict: a field the template uses but the
caller did not give is a :class:`~reasonrec.errors.ConfigError` naming the template file and the field.

Fields the templates read (see :func:`sample_fields` for building them from canonical tables):
    history: list of ``{title, rating, liked, year, categories, keywords}`` (oldest first)
    target: ``{title, year, categories, description, keywords}``;  candidates: list like ``target``
    user: ``{gender, age, occupation}``;  like_threshold: rating above which an interaction is a like (3)
    preference, reflection (R4ec user); item_fact, pos_histories, neg_histories (R4ec item);
    summary (TrackRec CoT for the validator); memory, prediction, feedback (STARec).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError

DOMAINS = ("movie", "book", "music", "business")
TASKS = (
    "r4ec_user_reason", "r4ec_user_reflect", "r4ec_user_refine",
    "r4ec_item_reason", "r4ec_item_reflect", "r4ec_item_refine",
    "trackrec_cot", "trackrec_rec",
    "starec_rank", "starec_memory",
    "thinkrec_reason", "thinkrec_rec",
)


@dataclass(frozen=True)
class PromptTemplate:
    task: str
    domain: str
    path: str
    source: str
    system: str | None
    user: str

    def render(self, **fields: Any) -> list[dict[str, str]]:
        """Chat messages for one sample."""
        messages = []
        if self.system:
            messages.append({"role": "system", "content": _render(self.path, "system", self.system, fields)})
        messages.append({"role": "user", "content": _render(self.path, "user", self.user, fields)})
        return messages


@functools.lru_cache(maxsize=1)
def _env():
    import jinja2

    return jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=False)


@functools.lru_cache(maxsize=256)
def _compile(path: str, part: str, source: str):
    import jinja2

    try:
        return _env().from_string(source)
    except jinja2.TemplateSyntaxError as err:
        raise ConfigError(f"{path}: '{part}' is not a valid Jinja2 template (line {err.lineno}: {err.message})") \
            from None


def _render(path: str, part: str, source: str, fields: Mapping[str, Any]) -> str:
    import jinja2

    try:
        return _compile(path, part, source).render(**fields).strip()
    except jinja2.UndefinedError as err:
        raise ConfigError(f"{path}: '{part}' needs a field the sample does not have ({err.message}); "
                          f"given fields: {sorted(fields)}") from None


def templates_dir() -> Path:
    return Path(str(resources.files("reasonrec") / "prompts"))


def load_template(task: str, domain: str, root: str | Path | None = None) -> PromptTemplate:
    """The template for ``task`` × ``domain``; ``root`` overrides the package folder (user-edited prompts)."""
    import difflib

    if task not in TASKS:
        close = difflib.get_close_matches(task, TASKS, n=1)
        raise ConfigError(f"unknown prompt task '{task}'" + (f"; did you mean '{close[0]}'?" if close else
                                                             f"; tasks: {', '.join(TASKS)}"))
    if domain not in DOMAINS:
        raise ConfigError(f"unknown prompt domain '{domain}'; domains: {', '.join(DOMAINS)}")
    path = Path(root or templates_dir()) / task / f"{domain}.yaml"
    if not path.is_file():
        raise ConfigError(f"prompt template {path} not found")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    unknown = set(data) - {"source", "domain", "system", "user"}
    if unknown or "user" not in data:
        raise ConfigError(f"{path}: expected keys source, domain, system, user; got {sorted(data)}")
    return PromptTemplate(task=task, domain=domain, path=str(path), source=str(data.get("source", "")),
                          system=data.get("system"), user=str(data["user"]))


def render(task: str, domain: str, **fields: Any) -> list[dict[str, str]]:
    """Messages for ``task`` in ``domain`` rendered from ``fields`` (a prompt for :meth:`LLM.generate`)."""
    return load_template(task, domain).render(**fields)


# ---------------------------------------------------------------------------------------------- sample fields

_YEAR_IN_TITLE = re.compile(r"\(\d{4}\)\s*$")


def item_fields(row: Mapping[str, Any]) -> dict[str, Any]:
    """Template fields of one item row of the canonical ``items`` table."""
    title = str(row.get("title", "") or "")
    year = row.get("year")
    year = None if year is None or (isinstance(year, float) and year != year) or str(year) in ("<NA>", "nan") else year
    if year is not None and _YEAR_IN_TITLE.search(title):
        year = None  # MovieLens titles already end in "(1995)"
    categories = str(row.get("categories", "") or "").replace("|", ", ")
    return {"title": title, "year": int(year) if year is not None else None, "categories": categories,
            "description": str(row.get("description", "") or ""), "brand": str(row.get("brand", "") or ""),
            "keywords": str(row.get("keywords", "") or "")}


def sample_fields(sample: Mapping[str, Any], items: Any, users: Any = None, like_threshold: float = 3,
                  max_history: int | None = None) -> dict[str, Any]:
    """Template fields of one sample (a row of a pointwise or ranking split, ``reasonrec.data.schema``).

    ``items`` (and ``users``) are the canonical tables as pandas DataFrames, or mappings id → row dict.
    """
    def lookup(table: Any, key: Any) -> Mapping[str, Any]:
        if table is None:
            return {}
        if isinstance(table, Mapping):
            return table.get(int(key), {})
        frame = table.set_index(table.columns[0], drop=False) if table.index.name is None else table
        try:
            return frame.loc[int(key)].to_dict()
        except KeyError:
            return {}

    if items is not None and not isinstance(items, Mapping):
        items = {int(r["item_id"]): r for r in items.to_dict("records")}
    if users is not None and not isinstance(users, Mapping):
        users = {int(r["user_id"]): r for r in users.to_dict("records")}
    def as_list(key: str) -> list:  # Parquet round-trips give numpy arrays, whose truth value is ambiguous
        value = sample.get(key)
        return [] if value is None else list(value)

    hist_ids = as_list("hist_item_ids")
    ratings = as_list("hist_ratings") or [None] * len(hist_ids)
    labels = as_list("hist_labels") or [None] * len(hist_ids)
    if max_history:
        hist_ids, ratings, labels = hist_ids[-max_history:], ratings[-max_history:], labels[-max_history:]
    history = []
    for iid, r, lab in zip(hist_ids, ratings, labels, strict=False):
        f = item_fields(lookup(items, iid))
        f["rating"] = (int(r) if r is not None and float(r).is_integer() else r)
        f["liked"] = bool(lab) if lab is not None else (r is not None and float(r) > like_threshold)
        history.append(f)
    out: dict[str, Any] = {"history": history, "like_threshold": like_threshold,
                           "target": item_fields(lookup(items, sample["item_id"])) if "item_id" in sample else {}}
    cands: Sequence[Any] = sample.get("candidate_ids", None)
    if cands is not None:
        out["candidates"] = [dict(item_fields(lookup(items, c)), item_id=int(c)) for c in cands]
    u = lookup(users, sample["user_id"]) if "user_id" in sample and users is not None else {}
    out["user"] = {k: (u.get(k) if u.get(k) == u.get(k) else None) for k in ("gender", "age", "occupation")}
    return out
