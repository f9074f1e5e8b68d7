"""`reasonrec serve RUN_DIR`: a finished run's artifacts behind an HTTP API (FastAPI; ``[serve]`` extra).

Endpoints:

* ``GET /healthz`` → ``{"status": "ok"}``;
* ``GET /v1/model`` → the run's method, dataset, protocol, split checksum, reference and its ``all``-subgroup
  metric rows (value and interval per model × variant × metric);
* ``GET /v1/users/{user_id}/explanation`` → the texts the run generated for that user, one per text column of
  the first per-user table (one with a ``user_column``) the method names through the report hook
  (``report_texts``, :mod:`reasonrec.eval.report`; R4ec: ``infer/user.parquet``, its ``kar``, ``r2ec`` and
  ``r4ec_refine`` knowledge). A user the run has no text for is a 404 naming the id and the run.

* ``POST /v1/score`` ``{"user_id", "item_ids": [...]}`` → one click probability per item, from the run's best
  backbone × variant (highest test AUC in ``results.json`` among the saved checkpoints) or the variant named by
  ``?variant=``;
* ``POST /v1/rank`` ``{"user_id", "candidates": [...]}`` → the candidates ordered by that probability.

Scoring reads the checkpoints the rec stage saves (:mod:`reasonrec.rec.checkpoint`, any ``*/ctr/`` folder of
the run; R4ec: ``rec/ctr/``). A request's history is the one of the user's latest sample in the run. A cold
user (one the run has no sample of) is scored as the backbones score padding: user id 0, an empty history,
the padding row of the user knowledge, so only the item side speaks; the answer says ``"cold_user": true``. An
item id the run's items table does not have is a 404 naming it. At most :data:`MAX_ITEMS` ids per request
(a 422 beyond). A run without checkpoints (finished before they were saved) answers 404 on both, saying so.

Everything is read once when the app is created. Concurrency: FastAPI runs these sync endpoints in a thread
pool; the text endpoints only read immutable tables, and every model forward runs under one ``threading.Lock``
with ``torch.no_grad()`` — torch modules in eval mode hold no per-call state, but the lock keeps concurrent
requests from oversubscribing the intra-op thread pool and makes the order of floating-point work the same as
serial. Requests are not batched across clients (each request is already one batched forward over its items).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Annotated, Any

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

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


MAX_ITEMS = 1000  # ids per score / rank request: one forward of this size takes ~tens of ms on a CPU core


# ids are bounded so that no request can overflow the int64 tensors they become
_Id = Annotated[int, Field(ge=0, le=2**31 - 1)]


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: _Id
    item_ids: list[_Id] = Field(min_length=1, max_length=MAX_ITEMS)


class RankRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: _Id
    candidates: list[_Id] = Field(min_length=1, max_length=MAX_ITEMS)


class Scored(BaseModel):
    user_id: int
    backbone: str
    variant: str
    cold_user: bool = Field(description="the run has no sample of this user: scored with the padding user "
                                        "(empty history, no user knowledge)")
    test_auc: float | None
    item_ids: list[int]
    probabilities: list[float]


class RankedItem(BaseModel):
    item_id: int
    score: float


class Ranked(BaseModel):
    user_id: int
    backbone: str
    variant: str
    cold_user: bool
    test_auc: float | None
    ranking: list[RankedItem]


class _Scorer:
    """The run's saved CTR backbones (one per variant × backbone) and the users' histories."""

    def __init__(self, root: Path, res):
        from ..rec import checkpoint as ckpt

        dirs = sorted(p.parent for p in root.glob("*/ctr/histories.pt"))
        self.folder = dirs[0] if dirs else None
        self.models: dict[tuple[str, str], Any] = {}
        self.features: dict[str, Any] = {}
        self.items: dict[str, set[int]] = {}
        if self.folder is None:
            return
        self.histories = ckpt.load_histories(self.folder / "histories.pt")
        for feats in sorted(self.folder.glob("*/features.pt")):
            variant = feats.parent.name
            self.features[variant], self.items[variant] = ckpt.load_features(feats)
            for path in sorted(feats.parent.glob("*.pt")):
                if path.name != "features.pt":
                    self.models[(path.stem, variant)] = ckpt.load_model(path, self.features[variant])
        auc = {(r.model, r.variant): r.value for r in res.rows if r.subgroup == "all" and r.metric == "auc"}
        # best of each variant, and overall, by the run's own test AUC (a model without a result row ranks last)
        ranked = sorted(self.models, key=lambda k: -auc.get(k, float("-inf")))
        self.best = {}
        for backbone, variant in ranked:
            self.best.setdefault(variant, backbone)
        self.default = (ranked[0][1] if ranked else None)
        self.auc = auc
        self.lock = threading.Lock()

    def score(self, user_id: int, item_ids: list[int], variant: str | None) -> dict[str, Any]:
        import torch

        variant = variant or self.default
        backbone = self.best[variant]
        fb = self.features[variant]
        hist = self.histories.get(int(user_id))
        cold = hist is None
        h_items, h_ratings = ([], []) if cold else hist
        df = pd.DataFrame({"user_id": [0 if cold else int(user_id)] * len(item_ids), "item_id": item_ids,
                           "label": [0.0] * len(item_ids), "hist_item_ids": [h_items] * len(item_ids),
                           "hist_ratings": [h_ratings] * len(item_ids)})
        enc = fb.encode(df, where="request")
        with self.lock, torch.no_grad():
            logit = self.models[(backbone, variant)](enc.batch(torch.arange(len(enc))))["logit"]
            probs = torch.sigmoid(logit).float().tolist()
        return {"user_id": int(user_id), "backbone": backbone, "variant": variant, "cold_user": cold,
                "test_auc": self.auc.get((backbone, variant)), "probabilities": probs}


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
    scorer = _Scorer(root, res)
    def _score(user_id: int, item_ids: list[int], variant: str | None) -> dict[str, Any]:
        if scorer.folder is None or not scorer.models:
            raise HTTPException(404, f"run {root} saved no CTR checkpoints (no */ctr/histories.pt): re-run its rec "
                                     "stage with this version to score")
        if variant is not None and variant not in scorer.best:
            raise HTTPException(404, f"unknown variant {variant!r}; run {root} has {sorted(scorer.best)}")
        known = scorer.items[variant or scorer.default]
        unknown = [i for i in dict.fromkeys(item_ids) if i not in known]
        if unknown:
            raise HTTPException(404, f"unknown item_id {', '.join(map(str, unknown[:10]))}: not in the items table "
                                     f"of run {root}")
        return scorer.score(user_id, item_ids, variant)

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

    @app.post("/v1/score", response_model=Scored)
    def score(req: ScoreRequest, variant: str | None = None) -> Scored:
        return Scored(item_ids=req.item_ids, **_score(req.user_id, req.item_ids, variant))

    @app.post("/v1/rank", response_model=Ranked)
    def rank(req: RankRequest, variant: str | None = None) -> Ranked:
        out = _score(req.user_id, req.candidates, variant)
        probs = out.pop("probabilities")
        # stable: equal scores keep the request's order
        order = sorted(range(len(probs)), key=lambda k: -probs[k])
        return Ranked(ranking=[RankedItem(item_id=req.candidates[k], score=probs[k]) for k in order], **out)

    return app
