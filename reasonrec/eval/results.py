"""The results schema every method writes, and the path from saved per-sample predictions to its rows.

Files of a run directory:

* ``results.json`` — :class:`Results`: run-level fields (``schema_version``, ``method``, ``dataset``,
  ``protocol``, ``split_checksum``, ``config``, ``packages``, the bootstrap settings, method ``details``) and
  two long tables:

  - ``rows``: one :class:`ResultRow` per (``model``, ``variant``, ``metric``, ``subgroup``) with ``value`` (mean
    over seeds), ``ci_low``/``ci_high`` (user bootstrap of the seed-mean), ``n`` (samples or users the metric
    averages over), ``seeds``, and ``seed_sd`` (the spread over seeds, the second source of variance);
  - ``deltas``: one :class:`DeltaRow` per (model, variant ≠ reference, metric, subgroup): the paired
    difference variant − ``reference`` with its interval and two-sided p-value (:mod:`.bootstrap`).

  Undefined values (AUC of a subgroup with one class, a standard deviation over one seed) are ``null``.
* ``results.parquet`` — ``rows`` and ``deltas`` in one table, told apart by ``kind`` (``metric`` / ``delta``).
* ``timings.json`` — :class:`Timings`: ``created`` and the wall seconds per stage. DESIGN: they live outside
  ``results.json`` because the same config and seed must give a *bit-identical* ``results.json``; a clock
  reading inside it would make every file differ. For the same reason the recorded ``config`` leaves out
  ``run_dir`` (where a run is written is not what it computes). :func:`read_results` reads both files.

``results.json`` is validated when written and when read; a file of another ``schema_version`` (or a
pre-schema R4ec file, which has none) is refused with one error saying what to do. Runs are comparable only if
they evaluated the same samples: :func:`check_comparable` refuses two results whose split checksums differ.

Per-sample predictions (``predictions.parquet``; columns :data:`PREDICTION_COLUMNS` plus subgroup columns) are
kept in the run so any interval can be recomputed, e.g. against another reference variant
(:func:`recompute`). :func:`rows_from_predictions` is the one function every method calls to turn them into
rows; :func:`user_subgroups` labels test samples warm/cold (ThinkRec, CoLLM) and by user activity (STARec
§5.3.3).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .. import io
from ..config import Section, format_validation_error
from ..errors import ConfigError, DataError
from .bootstrap import evaluate_variants, metric_function

SCHEMA_VERSION = 1
PREDICTION_COLUMNS = ("model", "variant", "seed", "sample", "user_id", "label", "score")
#: subgroup columns :func:`user_subgroups` adds; each value is a subgroup name.
SUBGROUP_COLUMNS = ("user_type", "activity")


class ResultsError(DataError):
    """A results file is missing, of another schema version, or fails validation."""


class ResultsSection(Section):
    """How a run's results are summarised (every method's config has one under ``results``).

    Fields:
        reference: the variant every other variant is compared with (paired Δ); default ``base``, the backbone
            without knowledge.
        metrics: metrics of the rows (:data:`reasonrec.eval.bootstrap.METRICS`, ``ndcg@K``...); default the
            four CTR metrics of CoLLM / R4ec (AUC, UAUC, LogLoss, ACC).
        n_boot: bootstrap replicates; default 1000 (percentile intervals at 95% need ~1000, Efron & Tibshirani
            1993 §19.3).
        confidence: interval level; default 0.95.
        seed: seed of the user draws (the same draws for every model, variant and subgroup).
        min_users: a (sub)group with fewer distinct users gets its value but no interval or p-value (``null``):
            a bootstrap over 1-9 users mostly redraws the same few users and claims a precision it does not
            have; default 10.
        subgroups: also report warm/cold and user-activity subgroups.
        activity_edges: train-interaction counts that start the activity groups after the first; default
            STARec §5.3.3's ML-1M thresholds (low < 25, medium 25-39, high ≥ 40).
    """

    reference: str = "base"
    metrics: list[str] = Field(default_factory=lambda: ["auc", "uauc", "logloss", "acc"])
    n_boot: int = Field(1000, ge=1)
    confidence: float = Field(0.95, gt=0, lt=1)
    seed: int = 0
    min_users: int = Field(10, ge=2)
    subgroups: bool = True
    activity_edges: list[int] = Field(default_factory=lambda: [25, 40])

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, metrics: list[str]) -> list[str]:
        for m in metrics:
            try:
                metric_function(m)
            except ConfigError as err:
                raise ValueError(str(err)) from None
        if not metrics:
            raise ValueError("name at least one metric")
        return metrics

    @field_validator("activity_edges")
    @classmethod
    def _increasing(cls, edges: list[int]) -> list[int]:
        if any(b <= a for a, b in zip(edges, edges[1:], strict=False)) or any(e < 1 for e in edges):
            raise ValueError(f"activity_edges must be positive and strictly increasing; got {edges}")
        return edges


# ------------------------------------------------------------------------------------------------ schema

class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


def _finite_or_none(v: float | None) -> float | None:
    if v is not None and not math.isfinite(v):
        raise ValueError(f"must be a finite number or null; got {v}")
    return v


class ResultRow(_Strict):
    """One metric of one (model, variant, subgroup): the mean over ``seeds`` and its interval."""

    model: str
    variant: str
    metric: str
    subgroup: str = "all"
    value: float | None
    ci_low: float | None
    ci_high: float | None
    n: int = Field(ge=0)
    seeds: list[int]
    seed_sd: float | None = None

    @field_validator("value", "ci_low", "ci_high", "seed_sd")
    @classmethod
    def _finite(cls, v: float | None) -> float | None:
        return _finite_or_none(v)

    @model_validator(mode="after")
    def _ordered(self):
        if self.ci_low is not None and self.ci_high is not None and self.ci_low > self.ci_high:
            raise ValueError(f"ci_low {self.ci_low} > ci_high {self.ci_high}")
        return self


class DeltaRow(_Strict):
    """Paired ``variant − reference`` on the same samples: mean over seeds, interval and p-value."""

    model: str
    variant: str
    reference: str
    metric: str
    subgroup: str = "all"
    value: float | None
    ci_low: float | None
    ci_high: float | None
    p_value: float | None = Field(None, ge=0, le=1)
    n: int = Field(ge=0)
    seeds: list[int]

    @field_validator("value", "ci_low", "ci_high")
    @classmethod
    def _finite(cls, v: float | None) -> float | None:
        return _finite_or_none(v)


class Results(_Strict):
    """The content of ``results.json`` (see the module docstring)."""

    schema_version: Literal[1] = SCHEMA_VERSION
    method: str
    dataset: str
    protocol: str
    split_checksum: str
    reference: str | None = None
    n_boot: int
    confidence: float
    bootstrap_seed: int = 0
    min_users: int = 10
    config: dict[str, Any] = Field(default_factory=dict)
    packages: dict[str, str | None] = Field(default_factory=dict)
    predictions: str | None = None  # path of the per-sample predictions, relative to the run directory
    rows: list[ResultRow]
    deltas: list[DeltaRow] = Field(default_factory=list)
    details: dict[str, Any] = Field(default_factory=dict)  # method diagnostics (R4ec: branches, inference)

    @model_validator(mode="after")
    def _consistent(self):
        keys = set()
        for r in self.rows:
            key = (r.model, r.variant, r.metric, r.subgroup)
            if key in keys:
                raise ValueError(f"two rows for model={r.model} variant={r.variant} metric={r.metric} "
                                 f"subgroup={r.subgroup}")
            keys.add(key)
        for d in self.deltas:
            for v in (d.variant, d.reference):
                if (d.model, v, d.metric, d.subgroup) not in keys:
                    raise ValueError(f"delta {d.variant} − {d.reference} ({d.model}, {d.metric}, {d.subgroup}) "
                                     f"has no row for variant {v}")
        return self

    def row(self, model: str, variant: str, metric: str, subgroup: str = "all") -> ResultRow:
        for r in self.rows:
            if (r.model, r.variant, r.metric, r.subgroup) == (model, variant, metric, subgroup):
                return r
        raise KeyError((model, variant, metric, subgroup))

    def table(self) -> pd.DataFrame:
        """``rows`` and ``deltas`` as one long DataFrame (the content of ``results.parquet``)."""
        rows = pd.DataFrame([{"kind": "metric", **r.model_dump()} for r in self.rows])
        deltas = pd.DataFrame([{"kind": "delta", **d.model_dump()} for d in self.deltas])
        df = pd.concat([rows, deltas], ignore_index=True) if len(deltas) else rows
        for col in ("reference", "p_value", "seed_sd"):
            if col not in df:
                df[col] = None
        # seeds as a comma-joined string: a Parquet list column of mixed None/list is awkward to read back
        df["seeds"] = df["seeds"].map(lambda s: ",".join(str(x) for x in s))
        return df[["kind", "model", "variant", "reference", "metric", "subgroup", "value", "ci_low", "ci_high",
                   "p_value", "n", "seeds", "seed_sd"]]


class Timings(_Strict):
    """``timings.json``: what differs between two otherwise identical runs."""

    created: str
    stage_seconds: dict[str, float | None] = Field(default_factory=dict)

    @classmethod
    def of_run(cls, run_dir: str | Path) -> Timings:
        """Now, and the wall seconds of every stage completed in ``run_dir`` (its ``_SUCCESS.json`` markers)."""
        from ..runs import stage_markers  # at call time: runs is the run-directory layer above the schema

        return cls(created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                   stage_seconds={name: m.get("seconds") for name, m in stage_markers(Path(run_dir)).items()})


# ------------------------------------------------------------------------------------------ read / write

def _validated(data: dict[str, Any], source: str) -> Results:
    version = data.get("schema_version") if isinstance(data, dict) else None
    if version != SCHEMA_VERSION:
        what = ("has no schema_version (it predates the results schema)" if version is None
                else f"has schema_version {version!r}")
        raise ResultsError(f"{source} {what}; this reasonrec reads schema_version {SCHEMA_VERSION}. Re-run the "
                           "method's last stage (delete its _SUCCESS.json and `reasonrec run` the config again) "
                           "to rewrite it in the current schema")
    try:
        return Results.model_validate(data)
    except ValidationError as err:
        raise ResultsError(format_validation_error(err, Results, source)) from None


def write_results(run_dir: str | Path, results: Results | dict[str, Any], timings: Timings | None = None) -> Path:
    """Validate ``results`` and write ``results.json``, ``results.parquet`` (and ``timings.json``) atomically."""
    run_dir = Path(run_dir)
    data = results.model_dump(mode="json") if isinstance(results, BaseModel) else results
    res = _validated(json.loads(json.dumps(data)), f"{run_dir / 'results.json'} (being written)")
    io.write_text(run_dir / "results.json", json.dumps(res.model_dump(mode="json"), indent=2) + "\n")
    io.write_parquet(run_dir / "results.parquet", res.table())
    if timings is not None:
        io.write_json(run_dir / "timings.json", timings.model_dump(mode="json"))
    return run_dir / "results.json"


def read_results(path: str | Path) -> tuple[Results, Timings | None]:
    """``results.json`` of a run directory (or the file itself), validated, and its ``timings.json`` if any."""
    path = Path(path)
    file = path / "results.json" if path.is_dir() else path
    if not file.is_file():
        raise ResultsError(f"{file}: no results file; run the experiment first (`reasonrec run CONFIG.yaml`)")
    try:
        data = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise ResultsError(f"{file}: not valid JSON ({err}); the run was interrupted while writing it?") from None
    res = _validated(data, str(file))
    tfile = file.parent / "timings.json"
    timings = Timings.model_validate_json(tfile.read_text()) if tfile.is_file() else None
    return res, timings


def check_comparable(a: Results, b: Results) -> None:
    """Refuse to compare runs that did not evaluate the same samples (dataset, protocol and split checksum)."""
    for field in ("dataset", "protocol", "split_checksum"):
        va, vb = getattr(a, field), getattr(b, field)
        if va != vb:
            raise ResultsError(f"results are not comparable: {field} differs ({va!r} vs {vb!r}); compare only "
                               "runs made on the same split (same dataset, protocol, seed, options and subset)")


# ----------------------------------------------------------------------------------- split checksum

def splits_checksum(splits) -> str:
    """:func:`split_checksum` of a pointwise ``Splits`` (train, valid and test, an empty valid included): the one
    way R4ec, TrackRec, ThinkRec and ``reasonrec bench`` hash the samples a run was evaluated on, so runs on the
    same samples share a checksum and ``compare`` pairs them."""
    return split_checksum({"train": splits.train, "valid": splits.valid, "test": splits.test})


def split_checksum(frames: dict[str, pd.DataFrame]) -> str:
    """sha256 of the samples' content (not of their Parquet bytes, which change with the pyarrow version).

    Every column is hashed by name, dtype and values; list columns (histories) by their flattened values and
    lengths.
    """
    h = hashlib.sha256()
    for name in sorted(frames):
        df = frames[name]
        h.update(f"{name}:{len(df)}".encode())
        for col in sorted(df.columns):
            s = df[col]
            h.update(f"|{col}".encode())
            if s.dtype == object and len(s) and isinstance(s.iloc[0], (list, tuple, np.ndarray)):
                lens = np.fromiter((len(x) for x in s), dtype=np.int64, count=len(s))
                flat = np.concatenate([np.asarray(x, dtype=np.float64) for x in s]) if lens.sum() else np.zeros(0)
                h.update(lens.tobytes())
                h.update(flat.tobytes())
            elif s.dtype == object or pd.api.types.is_string_dtype(s):
                # pandas' string dtype too: its to_numpy() is an object array, whose bytes are pointers
                h.update("\x1f".join(map(str, s)).encode())
            else:
                h.update(str(s.dtype).encode())
                h.update(np.ascontiguousarray(s.to_numpy()).tobytes())
    return h.hexdigest()


# ------------------------------------------------------------------------------------------- subgroups

def user_subgroups(test: pd.DataFrame, train: pd.DataFrame, activity_edges: list[int] | tuple[int, ...] = (25, 40)
                   ) -> pd.DataFrame:
    """Subgroup labels of every test row (same index): ``user_type`` is ``warm`` if the user has train rows,
    else ``cold`` (CoLLM / ThinkRec); ``activity`` groups users by their number of train rows with
    ``activity_edges`` as thresholds (STARec §5.3.3), named ``activity:<25``, ``activity:25-39``,
    ``activity:>=40`` for the default edges. Cold users fall in the lowest activity group."""
    counts = train["user_id"].value_counts()
    n_train = test["user_id"].map(counts).fillna(0).astype(int)
    edges = list(activity_edges)
    names = [f"activity:<{edges[0]}"] if edges else ["activity:all"]
    names += [f"activity:{a}-{b - 1}" for a, b in zip(edges, edges[1:], strict=False)]
    if edges:
        names.append(f"activity:>={edges[-1]}")
    groups = np.searchsorted(np.asarray(edges, dtype=np.int64), n_train.to_numpy(), side="right")
    return pd.DataFrame({"user_type": np.where(n_train.to_numpy() > 0, "warm", "cold"),
                         "activity": np.asarray(names, dtype=object)[groups]}, index=test.index)


def attach_subgroups(preds: pd.DataFrame, test: pd.DataFrame, train: pd.DataFrame,
                     activity_edges: list[int] | tuple[int, ...] = (25, 40)) -> pd.DataFrame:
    """``preds`` with the :func:`user_subgroups` columns of the test row each prediction's ``sample`` points at
    (``sample`` = row position in ``test``)."""
    groups = user_subgroups(test.reset_index(drop=True), train, activity_edges)
    pos = preds["sample"].to_numpy()
    if len(pos) and (pos.min() < 0 or pos.max() >= len(groups)):
        raise DataError(f"predictions: sample positions {pos.min()}..{pos.max()} outside the {len(groups)} test rows")
    out = preds.copy()
    for col in groups.columns:
        out[col] = groups[col].to_numpy()[pos]
    return out


def prediction_frame(model: str, variant: str, seed: int, user_ids, labels, scores,
                     subgroups: pd.DataFrame | None = None) -> pd.DataFrame:
    """One (model, variant, seed)'s test predictions in the layout of ``predictions.parquet``; ``sample`` is the
    row's position in the test split, which pairs variants."""
    n = len(labels)
    df = pd.DataFrame({"model": model, "variant": variant, "seed": np.full(n, seed, dtype=np.int64),
                       "sample": np.arange(n, dtype=np.int64), "user_id": np.asarray(user_ids, dtype=np.int64),
                       "label": np.asarray(labels, dtype=np.int8), "score": np.asarray(scores, dtype=np.float64)})
    if subgroups is not None:
        if len(subgroups) != n:
            raise DataError(f"predictions of {model}/{variant}: {len(subgroups)} subgroup rows for {n} samples")
        for col in subgroups.columns:
            df[col] = subgroups[col].to_numpy()
    return df


# ------------------------------------------------------------------------------- predictions → rows

def rows_from_predictions(preds: pd.DataFrame, section: ResultsSection | None = None
                          ) -> tuple[list[ResultRow], list[DeltaRow]]:
    """Metric rows (+ paired deltas vs ``section.reference``) for every model, variant, metric and subgroup.

    ``preds`` holds :data:`PREDICTION_COLUMNS` (and optionally :data:`SUBGROUP_COLUMNS`); every (model,
    variant, seed) must cover the same samples with the same users and labels, which the paired bootstrap
    needs. Subgroup ``all`` comes first, then every subgroup value in sorted order; a subgroup is bootstrapped
    on its own samples with the same seed.
    """
    section = section or ResultsSection()
    missing = [c for c in PREDICTION_COLUMNS if c not in preds.columns]
    if missing:
        raise DataError(f"predictions: missing columns {missing}; expected {list(PREDICTION_COLUMNS)}")
    group_cols = [c for c in SUBGROUP_COLUMNS if c in preds.columns] if section.subgroups else []
    rows: list[ResultRow] = []
    deltas: list[DeltaRow] = []
    for model in pd.unique(preds["model"]):
        part = preds[preds["model"] == model]
        variants = list(pd.unique(part["variant"]))
        ref = section.reference
        if ref not in variants:
            raise ConfigError(f"results.reference: variant '{ref}' was not run for model '{model}'; name one of "
                              f"{variants}")
        samples, scores, seeds = _aligned(part, model, variants)
        subsets = [("all", np.ones(len(samples), dtype=bool))]
        for col in group_cols:
            for value in sorted(pd.unique(samples[col])):
                subsets.append((str(value), (samples[col] == value).to_numpy()))
        for subgroup, mask in subsets:
            u, y = samples["user_id"].to_numpy()[mask], samples["label"].to_numpy()[mask]
            sub_scores = {v: s[:, mask] for v, s in scores.items()}
            for metric in section.metrics:
                est, dl = evaluate_variants(metric, u, y, sub_scores, ref, section.n_boot, section.confidence,
                                            section.seed, section.min_users)
                for v in variants:
                    e = est[v]
                    rows.append(ResultRow(model=model, variant=v, metric=metric, subgroup=subgroup,
                                          value=_num(e.value), ci_low=_num(e.ci_low), ci_high=_num(e.ci_high),
                                          n=e.n, seeds=seeds[v], seed_sd=_num(e.seed_sd)))
                for v in variants:
                    if v == ref:
                        continue
                    d = dl[v]
                    deltas.append(DeltaRow(model=model, variant=v, reference=ref, metric=metric,
                                           subgroup=subgroup, value=_num(d.value), ci_low=_num(d.ci_low),
                                           ci_high=_num(d.ci_high), p_value=_num(d.p_value), n=est[v].n,
                                           seeds=seeds[v]))
    return rows, deltas


def _num(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def _aligned(part: pd.DataFrame, model: str, variants: list[str]):
    """The test samples (user, label, subgroups) of one model and each variant's ``(seeds, N)`` scores."""
    first = None
    scores, seeds = {}, {}
    for v in variants:
        pv = part[part["variant"] == v]
        seeds[v] = sorted(int(s) for s in pd.unique(pv["seed"]))
        mats = []
        for s in seeds[v]:
            ps = pv[pv["seed"] == s].sort_values("sample", kind="stable")
            keyed = ps.drop(columns=["model", "variant", "seed", "score"]).reset_index(drop=True)
            if first is None:
                first = keyed
            elif not keyed.equals(first):
                raise DataError(f"predictions of model '{model}', variant '{v}', seed {s} cover other samples "
                                f"(or users/labels) than the first variant; paired intervals need every variant "
                                f"scored on the same test samples")
            mats.append(ps["score"].to_numpy(dtype=np.float64))
        scores[v] = np.vstack(mats)
    return first, scores, seeds


def build_results(preds: pd.DataFrame, section: ResultsSection, *, method: str, dataset: str, protocol: str,
                  split_checksum: str, config: dict[str, Any], packages: dict[str, str | None],
                  predictions: str | None = None, details: dict[str, Any] | None = None) -> Results:
    """A validated :class:`Results` from per-sample predictions (``config`` without ``run_dir``: see the module
    docstring)."""
    rows, deltas = rows_from_predictions(preds, section)
    config = {k: v for k, v in config.items() if k != "run_dir"}
    return Results(method=method, dataset=dataset, protocol=protocol, split_checksum=split_checksum,
                   reference=section.reference, n_boot=section.n_boot, confidence=section.confidence,
                   bootstrap_seed=section.seed, min_users=section.min_users, config=config, packages=packages, predictions=predictions,
                   rows=rows, deltas=deltas, details=details or {})


def recompute(run_dir: str | Path, reference: str) -> Results:
    """The run's results with deltas against ``reference``, recomputed from its saved predictions (same
    metrics, replicates and seed as the stored file)."""
    run_dir = Path(run_dir)
    res, _ = read_results(run_dir)
    if res.reference == reference:
        return res
    if res.predictions is None or not (run_dir / res.predictions).is_file():
        raise ResultsError(f"{run_dir}: no per-sample predictions saved ({res.predictions!r}); deltas against "
                           f"'{reference}' cannot be recomputed. Re-run the method's rec stage")
    metrics = list(dict.fromkeys(r.metric for r in res.rows))
    subgroups = any(r.subgroup != "all" for r in res.rows)
    section = ResultsSection(reference=reference, metrics=metrics, n_boot=res.n_boot, confidence=res.confidence,
                             seed=res.bootstrap_seed, min_users=res.min_users, subgroups=subgroups)
    rows, deltas = rows_from_predictions(pd.read_parquet(run_dir / res.predictions), section)
    return res.model_copy(update={"reference": reference, "rows": rows, "deltas": deltas})


# ------------------------------------------------------------------------------------------- rendering

def _fmt(x: float | None, signed: bool = False) -> str:
    if x is None:
        return "–"
    return f"{x:+.4f}" if signed else f"{x:.4f}"


def _ci(lo: float | None, hi: float | None, signed: bool = False) -> str:
    return "" if lo is None or hi is None else f"[{_fmt(lo, signed)}, {_fmt(hi, signed)}]"


def table_records(res: Results, metric: str = "auc", subgroup: str = "all") -> list[dict[str, str]]:
    """One record per (model, variant) of ``metric`` in ``subgroup``: value with interval, seed sd, and the
    paired Δ vs the reference with interval and p-value (shared by the markdown and the rich table)."""
    deltas = {(d.model, d.variant): d for d in res.deltas if d.metric == metric and d.subgroup == subgroup}
    out = []
    for r in res.rows:
        if r.metric != metric or r.subgroup != subgroup:
            continue
        d = deltas.get((r.model, r.variant))
        out.append({
            "model": r.model, "variant": r.variant, "value": _fmt(r.value), "ci": _ci(r.ci_low, r.ci_high),
            "seed_sd": _fmt(r.seed_sd), "n": str(r.n),
            "delta": "" if d is None else _fmt(d.value, True),
            "delta_ci": "" if d is None else _ci(d.ci_low, d.ci_high, True),
            "p": "" if d is None or d.p_value is None else f"{d.p_value:.3f}",
        })
    return out


def render_markdown(res: Results, metric: str = "auc") -> str:
    """The main table (subgroup ``all``: ``metric`` with its interval, seed sd, paired Δ vs the reference, and
    the other metrics' values), then ``metric`` per subgroup."""
    level = f"{round(res.confidence * 100)}%"
    others = [m for m in dict.fromkeys(r.metric for r in res.rows) if m != metric]
    ref = res.reference or "–"
    head = (f"| model | variant | {metric.upper()} | {level} CI | ± sd (seeds) | Δ vs {ref} | Δ {level} CI | p | "
            + " | ".join(m for m in others) + " |")
    lines = [f"Intervals: user bootstrap ({res.n_boot} replicates) of the mean over seeds; Δ paired on the same "
             f"test samples.", "", head, "|" + "---|" * (head.count("|") - 1)]
    values = {(r.model, r.variant, r.metric): r for r in res.rows if r.subgroup == "all"}
    for rec in table_records(res, metric):
        extra = [_fmt(values[(rec["model"], rec["variant"], m)].value) for m in others
                 if (rec["model"], rec["variant"], m) in values]
        lines.append(f"| {rec['model']} | {rec['variant']} | {rec['value']} | {rec['ci']} | {rec['seed_sd']} | "
                     f"{rec['delta']} | {rec['delta_ci']} | {rec['p']} | " + " | ".join(extra) + " |")
    subgroups = [s for s in dict.fromkeys(r.subgroup for r in res.rows) if s != "all"]
    if subgroups:
        lines += ["", f"{metric.upper()} by subgroup:", "",
                  f"| subgroup | model/variant | n | {metric.upper()} | {level} CI | Δ vs {ref} | Δ {level} CI | p |",
                  "|---|---|---|---|---|---|---|---|"]
        for s in subgroups:
            for rec in table_records(res, metric, s):
                lines.append(f"| {s} | {rec['model']}/{rec['variant']} | {rec['n']} | {rec['value']} | "
                             f"{rec['ci']} | {rec['delta']} | {rec['delta_ci']} | {rec['p']} |")
    return "\n".join(lines) + "\n"
