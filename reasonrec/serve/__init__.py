"""`reasonrec serve RUN_DIR`: a finished run's artifacts behind an HTTP API (FastAPI; ``[serve]`` extra).

Endpoints (this first part; scoring is not served yet, see below):

* ``GET /healthz`` → ``{"status": "ok"}``;
* ``GET /v1/model`` → the run's method, dataset, protocol, split checksum, reference and its ``all``-subgroup
  metric rows (value and interval per model × variant × metric);
* ``GET /v1/users/{user_id}/explanation`` → the texts the run generated for that user, one per text column of
  the first per-user table (one with a ``user_column``) the method names through the report hook
  (``report_texts``, :mod:`reasonrec.eval.report`; R4ec: ``infer/user.parquet``, its ``kar``, ``r2ec`` and
  ``r4ec_refine`` knowledge). A user the run has no text for is a 404 naming the id and the run.

Everything is read once when the app is created; requests only read immutable in-memory tables, so concurrent
requests are safe without a lock. NOT YET: ``/v1/score`` and ``/v1/rank`` need the trained CTR backbones, which
the rec stage does not save (it keeps per-sample predictions only); they come with a saved checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import ConfigError
from ..eval.results import read_results


def _user_texts(root: Path, res) -> tuple[str | None, dict[int, dict[str, str]]]:
    from ..eval.report import _markers, _text_specs

    for spec in _text_specs(res, _markers(root)):
        user_col = spec.get("user_column") or None
        path = root / spec["path"]
        if user_col is None or not path.is_file():
            continue
        df = pd.read_parquet(path)
        cols = spec.get("columns") or [c for c in df.columns if c != user_col
                                       and (df[c].dtype == object or pd.api.types.is_string_dtype(df[c]))]
        texts = {int(row[user_col]): {c: str(row[c]) for c in cols} for row in df.to_dict("records")}
        return spec["path"], texts
    return None, {}


def create_app(run_dir: str | Path):
    """The FastAPI app of a finished run (a ResultsError if the run has no valid ``results.json``)."""
    try:
        from fastapi import FastAPI, HTTPException
    except ImportError:  # the [serve] extra is optional
        raise ConfigError("reasonrec serve needs FastAPI and uvicorn: pip install -e '.[serve]'") from None
    from pydantic import BaseModel

    root = Path(run_dir).resolve()
    res, _ = read_results(root)
    source, texts = _user_texts(root, res)

    class Explanation(BaseModel):
        user_id: int
        source: str
        texts: dict[str, str]

    app = FastAPI(title=f"reasonrec · {res.method} · {root.name}", version="1")

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/model")
    def model() -> dict[str, Any]:
        rows = [r.model_dump(include={"model", "variant", "metric", "value", "ci_low", "ci_high", "n"})
                for r in res.rows if r.subgroup == "all"]
        return {"method": res.method, "run": str(root), "dataset": res.dataset, "protocol": res.protocol,
                "split_checksum": res.split_checksum, "reference": res.reference, "metrics": rows,
                "explanations": source}

    @app.get("/v1/users/{user_id}/explanation", response_model=Explanation)
    def explanation(user_id: int) -> Explanation:
        if user_id not in texts:
            what = f"in {source}" if source else "(the run names no per-user text table)"
            raise HTTPException(404, f"unknown user_id {user_id}: run {root} has no text for it {what}")
        return Explanation(user_id=user_id, source=source, texts=texts[user_id])

    return app
