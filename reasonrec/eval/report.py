"""A run's report: one self-contained HTML file (plots inline as SVG, no script, no CDN: it opens offline) and
the same tables as markdown; and the leaderboard of several runs on the same split (``compare``).

What a report reads from a run directory (every part is optional except ``results.json``):

* ``results.json`` (:mod:`.results`): the results table with intervals and paired Δ, and a plot per metric of
  every variant's value with its interval, one panel per model;
* ``timings.json`` or, without it, the ``seconds`` of every stage's ``_SUCCESS.json``: stage timings;
* every ``_SUCCESS.json``'s other info (R4ec: Algorithm 1's ``branches`` in ``construct``, which also get a bar
  plot): stage diagnostics;
* ``config.yaml``, ``manifest.json``: the config, package versions and data checksums;
* generated texts. HOOK: a method names its text tables in ``results.json`` ``details.report_texts``, or in a
  stage's ``_SUCCESS.json`` ``report_texts`` (paths relative to that stage's folder). An entry is a path to a
  Parquet file, or ``{"path", "id_column", "user_column", "columns", "caption"}``; when the table has a user
  column and the run saved per-sample predictions, each text is shown next to that user's test labels and mean
  score per variant. A sample of :data:`TEXT_ROWS` rows is shown, long texts cut at :data:`TEXT_CHARS`;
* curves. HOOK: ``results.json`` ``details.report_curves``, a list of ``{"title", "x", "y", "series": {name:
  [[x, y] or [x, y, lo, hi], ...]}}`` (TrackRec: V's and DIN's AUC and the CoT length per round, one line per
  arm): one line plot each (:func:`plot_curve`), intervals as error bars.

``compare`` (:func:`compare_runs`) refuses runs whose dataset, protocol or split checksum differ, naming the runs;
it ranks every (run, model, variant) on the metrics all runs share, and where two runs saved predictions on the
same test samples (same sample positions, users and labels) it adds paired Δ against the leaderboard's first
row, from one set of user replicates (:func:`.bootstrap.evaluate_variants`).
"""

from __future__ import annotations

import html
import io as _io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import io
from ..runs import stage_markers
from .results import Results, ResultsError, read_results, render_markdown, table_records

TEXT_ROWS = 8
TEXT_CHARS = 400
#: ``_SUCCESS.json`` keys that are bookkeeping, not diagnostics.
_MARKER_KEYS = {"stage", "artifacts", "sha256", "seconds", "fingerprint", "depends", "report_texts"}
_LOWER_IS_BETTER = ("logloss",)


# ------------------------------------------------------------------------------------------ reading a run

@dataclass
class RunView:
    """Everything a report shows of one run directory."""

    root: Path
    results: Results
    stage_seconds: dict[str, float | None]
    stage_info: dict[str, dict[str, Any]]
    config_text: str | None
    manifest: dict[str, Any] | None
    texts: list[tuple[str, pd.DataFrame]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what the report could not show, said in it
    run_warnings: list[str] = field(default_factory=list)  # the run's own (warnings.json: fallbacks, degenerate steps)

    @property
    def name(self) -> str:
        return self.root.name


def load_run(run_dir: str | Path) -> RunView:
    """Read what the report shows from ``run_dir`` (a :class:`ResultsError` if it has no valid results)."""
    root = Path(run_dir).resolve()
    res, timings = read_results(root)
    markers = stage_markers(root)
    if timings is not None and timings.stage_seconds:
        seconds = dict(timings.stage_seconds)
    else:
        seconds = {name: m.get("seconds") for name, m in markers.items()}
    info = {name: {k: v for k, v in m.items() if k not in _MARKER_KEYS} for name, m in markers.items()}
    config = (root / "config.yaml").read_text() if (root / "config.yaml").is_file() else None
    manifest = json.loads((root / "manifest.json").read_text()) if (root / "manifest.json").is_file() else None
    view = RunView(root, res, seconds, {k: v for k, v in info.items() if v}, config, manifest)
    view.texts = _text_tables(root, res, markers, view.notes)
    view.run_warnings = read_run_warnings(root)
    return view


def read_run_warnings(root: Path) -> list[str]:
    """The messages of ``warnings.json`` (:meth:`reasonrec.runs.RunDir.warn`), prefixed by their stage."""
    path = Path(root) / "warnings.json"
    if not path.is_file():
        return []
    try:
        recs = json.loads(path.read_text())
    except json.JSONDecodeError:
        return []
    return [f"{r['stage']}: {r['message']}" if r.get("stage") else r["message"] for r in recs]


def _text_specs(res: Results, markers: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    specs = []
    for entry in res.details.get("report_texts", []) or []:
        specs.append(entry if isinstance(entry, dict) else {"path": entry})
    for stage, m in markers.items():
        for entry in m.get("report_texts", []) or []:
            spec = dict(entry) if isinstance(entry, dict) else {"path": entry}
            spec["path"] = f"{stage}/{spec['path']}"
            specs.append(spec)
    return specs


def _text_tables(root: Path, res: Results, markers, notes: list[str]) -> list[tuple[str, pd.DataFrame]]:
    preds = None
    if res.predictions and (root / res.predictions).is_file():
        preds = pd.read_parquet(root / res.predictions)
    out = []
    for spec in _text_specs(res, markers):
        path = root / spec["path"]
        if not path.is_file():  # the rest of the report is still worth writing: say it here, do not refuse
            notes.append(f"report_texts names {spec['path']}, which does not exist in {root}; the stage that "
                         "writes it did not finish, or the name is wrong")
            continue
        df = pd.read_parquet(path)
        cols = spec.get("columns") or [c for c in df.columns
                                        if df[c].dtype == object or pd.api.types.is_string_dtype(df[c])]
        id_col = spec.get("id_column") or next((c for c in ("entity_id", "user_id", "item_id", "id")
                                                if c in df.columns), None)
        keep = ([id_col] if id_col else []) + [c for c in cols if c != id_col]
        sample = df[keep].head(TEXT_ROWS).copy()
        user_col = spec.get("user_column") or ("user_id" if "user_id" in df.columns else None)
        if user_col is None and spec["path"].endswith("user.parquet") and id_col:
            user_col = id_col  # a per-user table keyed by entity id (R4ec's infer/user.parquet)
        if preds is not None and user_col is not None:
            sample = _with_labels(sample, preds, user_col)
        out.append((spec.get("caption") or spec["path"], sample))
    return out


def _with_labels(sample: pd.DataFrame, preds: pd.DataFrame, user_col: str) -> pd.DataFrame:
    """The user's test samples and positives, and the mean score per (model/)variant over seeds."""
    p = preds[preds["user_id"].isin(sample[user_col])]
    first = p[(p["model"] == p["model"].iloc[0]) & (p["variant"] == p["variant"].iloc[0])] if len(p) else p
    first = first[first["seed"] == first["seed"].min()] if len(first) else first
    g = first.groupby("user_id")["label"].agg(["size", "sum"])
    out = sample.copy()
    out["test samples"] = sample[user_col].map(g["size"]).fillna(0).astype(int)
    out["positives"] = sample[user_col].map(g["sum"]).fillna(0).astype(int)
    multi_model = p["model"].nunique() > 1
    for (model, variant), part in p.groupby(["model", "variant"], sort=False):
        mean = part.groupby("user_id")["score"].mean()
        out[f"score {model}/{variant}" if multi_model else f"score {variant}"] = sample[user_col].map(mean).round(3)
    return out


# ---------------------------------------------------------------------------------------------- plots

def _svg(fig) -> str:
    buf = _io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]  # drop the XML prolog and DOCTYPE: the SVG sits inside HTML


def plot_variants(res: Results, metric: str, subgroup: str = "all") -> str | None:
    """One panel per model: every variant's ``metric`` with its interval (SVG), the reference dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in res.rows if r.metric == metric and r.subgroup == subgroup and r.value is not None]
    if not rows:
        return None
    models = list(dict.fromkeys(r.model for r in rows))
    per_panel = max(3.2, 0.42 * max(sum(r.model == m for r in rows) for m in models) + 1.0)  # room for the labels
    fig, axes = plt.subplots(1, len(models), figsize=(max(4.0, per_panel * len(models)), 3.0), squeeze=False,
                             sharey=True)
    for ax, model in zip(axes[0], models, strict=True):
        mr = [r for r in rows if r.model == model]
        x = np.arange(len(mr))
        vals = np.array([r.value for r in mr])
        lo = np.array([r.ci_low if r.ci_low is not None else r.value for r in mr])
        hi = np.array([r.ci_high if r.ci_high is not None else r.value for r in mr])
        colors = ["#888888" if r.variant == res.reference else "#1f5fa8" for r in mr]
        ax.errorbar(x, vals, yerr=[vals - lo, hi - vals], fmt="none", ecolor="#555555", capsize=4, lw=1)
        ax.scatter(x, vals, c=colors, zorder=3)
        ref = next((r.value for r in mr if r.variant == res.reference), None)
        if ref is not None:
            ax.axhline(ref, color="#888888", ls="--", lw=0.8)
        ax.set_xticks(x, [r.variant for r in mr], rotation=30, ha="right")
        ax.set_title(f"{model}  (n={mr[0].n})", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel(f"{metric}" + (" (lower is better)" if metric in _LOWER_IS_BETTER else ""))
    return _svg(fig)


def plot_counts(counts: dict[str, Any], title: str) -> str | None:
    """A horizontal bar per numeric entry of ``counts`` (R4ec: Algorithm 1's branches)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    flat = {k: v for k, v in _flatten(counts).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if not flat:
        return None
    fig, ax = plt.subplots(figsize=(6.0, 0.3 * len(flat) + 1.0))
    ax.barh(list(flat), list(flat.values()), color="#1f5fa8")
    ax.invert_yaxis()
    ax.set_title(title, fontsize=10)
    for i, v in enumerate(flat.values()):
        ax.text(v, i, f" {v:g}", va="center", fontsize=8)
    return _svg(fig)


def plot_curve(spec: dict[str, Any]) -> str | None:
    """One line per series of ``spec`` (the ``details.report_curves`` hook): ``{"title", "x", "y", "series":
    {name: [[x, y] or [x, y, lo, hi], ...]}}``; an interval, when given, is drawn as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {k: [p for p in v if p[1] is not None] for k, v in (spec.get("series") or {}).items()}
    series = {k: v for k, v in series.items() if v}
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    for k, (name, pts) in enumerate(series.items()):
        x = np.array([p[0] for p in pts], dtype=float) + 0.04 * (k - (len(series) - 1) / 2)  # side by side
        y = np.array([p[1] for p in pts], dtype=float)
        line = ax.plot(x, y, marker="o", label=name)[0]
        if all(len(p) >= 4 and p[2] is not None and p[3] is not None for p in pts):
            lo, hi = np.array([p[2] for p in pts], float), np.array([p[3] for p in pts], float)
            ax.errorbar(x, y, yerr=[y - lo, hi - y], fmt="none", ecolor=line.get_color(), capsize=3, lw=0.8)
    ax.set_xlabel(spec.get("x", ""))
    ax.set_ylabel(spec.get("y", ""))
    ax.set_title(spec.get("title", ""), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    xs = sorted({p[0] for pts in series.values() for p in pts})
    if all(float(v).is_integer() for v in xs):
        ax.set_xticks(xs)
    return _svg(fig)


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


# ------------------------------------------------------------------------------------------- rendering

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1180px;
color:#222;padding:0 16px}
h1{font-size:22px}h2{font-size:18px;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}
h3{font-size:15px}
table{border-collapse:collapse;margin:8px 0 16px;font-size:13px}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f3f5f8}td.num{text-align:right;font-variant-numeric:tabular-nums}
.meta{color:#555}pre{background:#f6f8fa;padding:8px;overflow:auto;font-size:12px;max-height:360px}
.plot svg{max-width:100%;height:auto}.text{max-width:520px;white-space:pre-wrap}
details{margin:8px 0}.wide{overflow-x:auto}.warn{background:#fff4e5;border-left:4px solid #e8a33d;padding:4px 8px}
"""


def _esc(x: Any) -> str:
    return html.escape("" if x is None else str(x))


def _num_cell(x: Any) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


def _html_table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = []
    for r in rows:
        cells = []
        for v in r:
            if _num_cell(v):
                text = "–" if isinstance(v, float) and not math.isfinite(v) else (
                    f"{v:.4g}" if isinstance(v, (float, np.floating)) else str(v))
                cells.append(f'<td class="num">{_esc(text)}</td>')
            elif isinstance(v, str) and len(v) > 60:
                cells.append(f'<td class="text">{_esc(_cut(v))}</td>')
            else:
                cells.append(f"<td>{_esc(_cut(v) if isinstance(v, str) else _cell(v))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _cut(text: str) -> str:
    return text if len(text) <= TEXT_CHARS else text[:TEXT_CHARS] + " …"


def _cell(v: Any) -> str:
    if isinstance(v, (list, tuple, np.ndarray)):
        return " | ".join(_cut(str(x)) for x in v)
    return "" if v is None else str(v)


def _md_table(header: list[str], rows: list[list[Any]]) -> str:
    def fmt(v):
        if _num_cell(v):
            return f"{v:.4g}" if isinstance(v, (float, np.floating)) else str(v)
        return (_cut(v) if isinstance(v, str) else _cell(v)).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _metrics(res: Results) -> list[str]:
    return list(dict.fromkeys(r.metric for r in res.rows))


def _results_rows(res: Results, metric: str) -> tuple[list[str], list[list[Any]]]:
    ref = res.reference or "–"
    header = ["model", "variant", "n", metric, "CI", "± sd seeds", f"Δ vs {ref}", "Δ CI", "p"]
    rows = [[r["model"], r["variant"], r["n"], r["value"], r["ci"], r["seed_sd"], r["delta"], r["delta_ci"], r["p"]]
            for r in table_records(res, metric)]
    what = res.details.get("variants")
    if isinstance(what, dict) and what:  # the method says what each variant is (R4ec: VARIANT_INFO)
        header.append("what it is")
        for row in rows:
            row.append(what.get(row[1], ""))
    return header, rows


def _run_section(view: RunView) -> tuple[str, str]:
    """The HTML and markdown of one run."""
    res = view.results
    level = f"{round(res.confidence * 100)}%"
    h = [f"<h2>{_esc(res.method)} · {_esc(view.name)}</h2>",
         f'<p class="meta">dataset <b>{_esc(res.dataset)}</b> · protocol <b>{_esc(res.protocol)}</b> · split '
         f"<code>{_esc(res.split_checksum[:16])}</code> · run <code>{_esc(view.root)}</code><br>{level} intervals: "
         f"user bootstrap ({res.n_boot} replicates) of the mean over seeds; Δ paired on the same test samples "
         f"vs <b>{_esc(res.reference)}</b>.</p>"]
    md = [f"## {res.method} · {view.name}", "",
          f"dataset {res.dataset} · protocol {res.protocol} · split `{res.split_checksum[:16]}` · run `{view.root}`",
          "", render_markdown(res)]
    h.append("<h3>Results</h3>")
    said = result_warnings(res)
    # the run's own warnings, except the results' ones it recorded too (said once, by result_warnings)
    said += [w for w in view.run_warnings if w.removeprefix("results: ") not in said]
    for note in said + view.notes:  # a degenerate outcome is said where the numbers are read, not left to guess
        h.append(f'<p class="warn">warning: {_esc(note)}</p>')
        md.insert(-1, f"> warning: {note}\n")
    for metric in _metrics(res):
        if all(r.value is None for r in res.rows if r.metric == metric and r.subgroup == "all"):
            continue  # undefined on every variant: the warning above says so, a table of dashes says nothing
        header, rows = _results_rows(res, metric)
        h.append(f"<h4>{_esc(metric)}</h4>" + _html_table(header, rows))
        svg = plot_variants(res, metric)
        if svg:
            h.append(f'<div class="plot" data-plot="variants-{_esc(metric)}">{svg}</div>')
    for k, spec in enumerate(res.details.get("report_curves", []) or []):
        svg = plot_curve(spec)
        if svg:
            h.append(f'<div class="plot" data-plot="curve-{k}">{svg}</div>')
    timings = [[k, v] for k, v in view.stage_seconds.items()]
    if timings:
        h.append("<h3>Stage timings (s)</h3>" + _html_table(["stage", "seconds"], timings))
        md += ["### Stage timings (s)", "", _md_table(["stage", "seconds"], timings)]
    for stage, info in view.stage_info.items():
        flat = _flatten(info)
        rows = [[k, json.dumps(v) if isinstance(v, (dict, list)) else v] for k, v in flat.items()]
        h.append(f"<details><summary>stage <b>{_esc(stage)}</b>: diagnostics ({len(rows)})</summary>"
                 + _html_table(["key", "value"], rows) + "</details>")
        md += [f"### Stage {stage}: diagnostics", "", _md_table(["key", "value"], rows)]
        if isinstance(info.get("branches"), dict):
            svg = plot_counts(info["branches"], f"{stage}: branch counts")
            if svg:
                h.append(f'<div class="plot" data-plot="branches">{svg}</div>')
    for caption, df in view.texts:
        header = [str(c) for c in df.columns]
        rows = df.to_numpy(dtype=object).tolist()
        h.append(f"<h3>Generated texts: {_esc(caption)} (first {len(df)})</h3>" + _html_table(header, rows))
        md += [f"### Generated texts: {caption} (first {len(df)})", "", _md_table(header, rows)]
    if view.config_text:
        h.append(f"<details><summary>config.yaml</summary><pre>{_esc(view.config_text)}</pre></details>")
    if view.manifest:
        man = view.manifest
        pkgs = [[k, v] for k, v in (man.get("packages") or {}).items()]
        sums = [[k, v] for k, v in (man.get("data_checksums") or {}).items()]
        h.append(f'<h3>Environment</h3><p class="meta">created {_esc(man.get("created"))} · python '
                 f'{_esc(man.get("python"))} · {_esc(man.get("platform"))}</p>')
        h.append("<details><summary>package versions</summary>" + _html_table(["package", "version"], pkgs)
                 + "</details>")
        h.append("<details open><summary>data checksums (sha256)</summary>"
                 + _html_table(["file", "sha256"], sums) + "</details>")
        md += ["### Data checksums (sha256)", "", _md_table(["file", "sha256"], sums)]
    return "\n".join(h), "\n".join(md)


def result_warnings(res: Results) -> list[str]:
    """What makes the table hard to read: no interval for lack of users, metrics undefined on every variant."""
    out = []
    all_rows = [r for r in res.rows if r.subgroup == "all"]
    bare = sorted({r.metric for r in all_rows if r.value is not None and r.ci_low is None})
    if bare:
        n = max((r.n for r in all_rows if r.metric == bare[0]), default=0)
        out.append(f"no interval for {', '.join(bare)}: the test set is too small (n={n}; intervals need at "
                   f"least {res.min_users} users); differences between variants are not readable")
    undefined = [m for m in _metrics(res) if all(r.value is None for r in all_rows if r.metric == m)]
    if undefined:
        out.append(f"{', '.join(undefined)} undefined on every variant (e.g. no user with both a positive and a "
                   "negative test sample)")
    return out


def _page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>'
            f"<style>{_CSS}</style></head><body><h1>{_esc(title)}</h1>\n{body}\n</body></html>\n")


def render_report(run_dirs: list[str | Path]) -> tuple[str, str]:
    """The HTML page and the markdown of one or more runs; with several runs on the same split, their leaderboard
    comes first."""
    views = [load_run(d) for d in run_dirs]
    html_parts, md_parts = [], []
    if len(views) > 1:
        try:
            board = compare_runs([v.root for v in views])
        except ResultsError as err:  # different splits: each run is still reported, without a leaderboard
            html_parts.append(f'<p class="meta">No leaderboard: {_esc(err)}</p>')
        else:
            html_parts.append(board.html())
            md_parts.append(board.markdown())
    for v in views:
        h, m = _run_section(v)
        html_parts.append(h)
        md_parts.append(m)
    title = "reasonrec report · " + ", ".join(v.name for v in views)
    return _page(title, "\n".join(html_parts)), f"# {title}\n\n" + "\n\n".join(md_parts)


def write_report(run_dirs: list[str | Path], out: str | Path | None = None) -> Path:
    """Write ``report.html`` (default: in the first run directory) and ``report.md`` beside it; return the
    absolute path of the HTML file."""
    page, md = render_report(run_dirs)
    out = Path(out) if out is not None else Path(run_dirs[0]) / "report.html"
    out = out.resolve()
    io.write_text(out, page)
    io.write_text(out.with_suffix(".md"), md)
    return out


# ---------------------------------------------------------------------------------------------- compare

@dataclass
class Leaderboard:
    """Every (run, model, variant) on the metrics all compared runs share, ranked by the first metric."""

    runs: list[str]
    metrics: list[str]
    table: pd.DataFrame  # run, method, model, variant, n, <metric>, <metric> CI, and paired Δ columns
    paired_with: str | None  # "run/model/variant" the Δ columns are taken against, if any
    confidence: float

    def _rows(self) -> tuple[list[str], list[list[Any]]]:
        header = list(self.table.columns)
        t = self.table.astype(object)
        for col in header:  # Δ signed, values at 4 decimals: the digits a bootstrap interval can support
            if col in self.metrics or (col.startswith("Δ ") and not col.endswith(" CI")):
                sign = "+" if col.startswith("Δ ") else ""
                t[col] = [("" if v is None or v != v else f"{v:{sign}.4f}") for v in self.table[col]]
        # a column empty in every row (a metric undefined everywhere, intervals withheld for too few users) is noise
        keep = [c for c in header if c in ("run", "method", "model", "variant")
                or any(v not in (None, "") and v == v for v in t[c])]
        return keep, t[keep].to_numpy(dtype=object).tolist()

    def brief(self) -> tuple[list[str], list[list[Any]]]:
        """The terminal's narrower table: the first metric with its interval and paired Δ, the other metrics'
        values only (``--markdown`` and the HTML have every column)."""
        header, rows = self._rows()
        first = self.metrics[0]
        wanted = {"run", "method", "model", "variant", "n", first, f"{first} CI", f"Δ {first}", f"Δ {first} CI",
                  *self.metrics}
        idx = [i for i, c in enumerate(header) if c in wanted]
        return [header[i] for i in idx], [[r[i] for i in idx] for r in rows]

    def markdown(self) -> str:
        header, rows = self._rows()
        note = (f"Δ paired on the same test samples vs {self.paired_with}." if self.paired_with
                else "No paired Δ: the runs share no per-sample predictions on the same test samples.")
        return (f"## Leaderboard ({len(self.runs)} runs, same split)\n\n{note}\n\n"
                + _md_table(header, [[_cell(v) if not _num_cell(v) else v for v in r] for r in rows]))

    def html(self) -> str:
        header, rows = self._rows()
        note = (f"Δ paired on the same test samples vs <b>{_esc(self.paired_with)}</b>." if self.paired_with
                else "No paired Δ: the runs share no per-sample predictions on the same test samples.")
        return (f"<h2>Leaderboard ({len(self.runs)} runs, same split)</h2><p class=\"meta\">{note}</p>"
                + f'<div class="wide">{_html_table(header, rows)}</div>')


def _fmt_ci(lo, hi) -> str:
    return "" if lo is None or hi is None else f"[{lo:.4f}, {hi:.4f}]"


def compare_runs(run_dirs: list[str | Path], n_boot: int | None = None) -> Leaderboard:
    """The leaderboard of runs made on the same dataset, protocol and split checksum (a :class:`ResultsError`
    naming the runs otherwise)."""
    loaded = []
    for d in run_dirs:
        res, _ = read_results(d)
        loaded.append((Path(d).resolve(), res))
    first_dir, first = loaded[0]
    for d, res in loaded[1:]:
        for key in ("dataset", "protocol", "split_checksum"):
            a, b = getattr(first, key), getattr(res, key)
            if a != b:
                raise ResultsError(f"compare: runs {first_dir} and {d} are not comparable: {key} differs ({a!r} vs "
                                   f"{b!r}); compare only runs made on the same split (same dataset, protocol, "
                                   "seed, options and subset)")
    shared = [m for m in _metrics(first) if all(m in _metrics(r) for _, r in loaded[1:])]
    if not shared:
        raise ResultsError("compare: the runs share no metric: " + "; ".join(
            f"{d}: {', '.join(_metrics(r))}" for d, r in loaded))
    names = _unique_names([d for d, _ in loaded])
    records = []
    for (_, res), name in zip(loaded, names, strict=True):
        rows = {(r.model, r.variant, r.metric): r for r in res.rows if r.subgroup == "all"}
        for model, variant in dict.fromkeys((r.model, r.variant) for r in res.rows if r.subgroup == "all"):
            rec = {"run": name, "method": res.method, "model": model, "variant": variant}
            for m in shared:
                r = rows.get((model, variant, m))
                rec["n"] = rec.get("n", r.n if r else None)
                rec[m] = None if r is None else r.value
                rec[f"{m} CI"] = "" if r is None else _fmt_ci(r.ci_low, r.ci_high)
            records.append(rec)
    table = pd.DataFrame(records)
    key = shared[0]
    table = table.sort_values(key, ascending=key in _LOWER_IS_BETTER, kind="stable", na_position="last")
    table = table.reset_index(drop=True)
    paired_with = _paired_deltas(loaded, names, table, shared, n_boot)
    return Leaderboard([str(d) for d, _ in loaded], shared, table, paired_with, first.confidence)


def _unique_names(dirs: list[Path]) -> list[str]:
    names = [d.name for d in dirs]
    if len(set(names)) == len(names):
        return names
    return [f"{d.parent.name}/{d.name}" for d in dirs]


def _paired_deltas(loaded, names, table: pd.DataFrame, metrics: list[str], n_boot: int | None) -> str | None:
    """Add ``Δ <metric>`` and ``Δ CI`` columns vs the table's first row, over the rows whose runs saved
    predictions on the same samples as that row's run; return the reference's name (``None`` if none pair)."""
    from .bootstrap import evaluate_variants

    preds = {}
    for (d, res), name in zip(loaded, names, strict=True):
        if res.predictions and (d / res.predictions).is_file():
            preds[name] = (res, pd.read_parquet(d / res.predictions))
    top = table.iloc[0]
    if top["run"] not in preds:
        return None
    res0, p0 = preds[top["run"]]
    key_cols = ["sample", "user_id", "label"]

    def samples(p, model, variant):
        part = p[(p["model"] == model) & (p["variant"] == variant)]
        seeds = sorted(pd.unique(part["seed"]))
        mats, keyed = [], None
        for s in seeds:
            ps = part[part["seed"] == s].sort_values("sample", kind="stable")
            keyed = ps[key_cols].reset_index(drop=True)
            mats.append(ps["score"].to_numpy(dtype=np.float64))
        return keyed, np.vstack(mats)

    ref_keys, ref_scores = samples(p0, top["model"], top["variant"])
    scores, idx = {"__ref__": ref_scores}, {}
    for i, row in table.iterrows():
        if i == 0 or row["run"] not in preds:
            continue
        keys, s = samples(preds[row["run"]][1], row["model"], row["variant"])
        if keys is not None and keys.equals(ref_keys):
            idx[i] = f"r{i}"
            scores[f"r{i}"] = s
    if not idx:
        return None
    u, y = ref_keys["user_id"].to_numpy(), ref_keys["label"].to_numpy()
    for m in metrics:
        _, deltas = evaluate_variants(m, u, y, scores, "__ref__", n_boot or res0.n_boot, res0.confidence,
                                      res0.bootstrap_seed, res0.min_users)
        dv, dci = [None] * len(table), [""] * len(table)
        dv[0] = 0.0 if top[m] is not None and top[m] == top[m] else None
        for i, k in idx.items():
            d = deltas[k]
            dv[i] = d.value
            dci[i] = _fmt_ci(*(None if not math.isfinite(x) else x for x in (d.ci_low, d.ci_high)))
        table[f"Δ {m}"] = dv
        table[f"Δ {m} CI"] = dci
    return f"{top['run']}/{top['model']}/{top['variant']}"


__all__ = ["Leaderboard", "RunView", "compare_runs", "load_run", "plot_curve", "plot_variants", "render_report", "write_report"]
