"""Fit, score and evaluate the classic baselines: one estimator (:class:`BaselineRecommender`) and ``train_baseline``.

Losses are plain functions of logits (shapes: B batch, K negatives):

* ``bce_loss``   — BCE on labels (pointwise) or positive vs K sampled negatives (MF-BCE, SASRec with K = 1);
* ``bpr_loss``   — −log σ(s⁺ − s⁻) (Rendle et al., UAI 2009, Eq. 4; BPR-MF and LightGCN Eq. 15);
* ``gbce_loss``  — gSASRec's generalised BCE (Petrov & Macdonald, RecSys 2023, Eq. 10/11): the positive's
  log-probability raised to β = α(t(1 − 1/α) + 1/α), α = K/(|I| − 1), default t = 0.75;
* ``ce_loss``    — full softmax cross-entropy over all items (GRU4Rec here).

Training: Adam, early stopping on the validation metric (AUC for pointwise protocols, NDCG@10 on the candidate
lists for starec), patience ``patience`` epochs but at least ``patience_steps`` optimizer steps, best weights
restored. Negatives are drawn uniformly from the training items and re-drawn where the user has a training
positive with that item.
"""

from __future__ import annotations

import copy
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from reasonrec.config import Section
from reasonrec.errors import ConfigError, DataError
from reasonrec.eval.metrics import auc, ndcg_at_k, pointwise_report, ranking_report

from .data import EvalSet, TrainData, build_train_data, eval_set, pad_histories
from .models import MF, GRU4Rec, LightGCN, Pop, SASRec

# name → (model class, implicit-mode loss). In pointwise mode every model but BPR uses BCE on the labels.
BASELINES: dict[str, tuple[type, str]] = {
    "pop": (Pop, "none"),
    "mf": (MF, "bce"),
    "bpr": (MF, "bpr"),
    "lightgcn": (LightGCN, "bpr"),
    "sasrec": (SASRec, "bce"),
    "gsasrec": (SASRec, "gbce"),
    "gru4rec": (GRU4Rec, "ce"),
}
_SEQUENTIAL = {"sasrec", "gsasrec", "gru4rec"}


class BaselineConfig(Section):
    """Hyper-parameters of the classic baselines.

    Fields:
        dim: embedding size; default 64 (SASRec paper 50, ThinkRec MF 256; 64 keeps CPU runs short).
        n_layers: LightGCN propagation layers (paper: 3) / SASRec blocks (paper: 2); default by model.
        n_heads: SASRec attention heads; default 1 (SASRec paper).
        dropout: SASRec / GRU4Rec dropout; default 0.2 (SASRec paper for ML-1M).
        max_len: history length the sequence models read; default 50 (starec sequences hold 40).
        lr: Adam learning rate; default 1e-3 (SASRec paper, LightGCN paper).
        weight_decay: Adam L2; default 0 for sequence models, 1e-5 for MF / LightGCN / BPR (ThinkRec grid 1e-5..1e-7).
        batch_size: pointwise protocols: 1024 (ThinkRec MF) for ID models, 256 for sequence models; starec: 128
            (sequences for SASRec-style models, SASRec paper; pairs for MF / BPR / LightGCN — BPR is per-sample
            SGD in the paper and in cornac, and 1024 left only ~25 Adam steps per epoch on ML-100K starec:
            validation NDCG@10 0.596 → 0.603, test 0.618 → 0.634 with 128).
        epochs: maximum epochs; default 200 (early stopping and ``time_budget_s`` end most runs far sooner).
        patience: epochs without validation gain before stopping; default 5.
        patience_steps: ... and at least this many optimizer steps without gain; default 300. Why: on ML-100K
            starec a sequence model takes only 7 steps per epoch (800 sequences / 128) and sits on a
            popularity-level plateau (valid NDCG@10 ≈ 0.51, Pop's level) for ~150 steps before it learns the
            sequential signal; 5 epochs (35 steps) stopped it on that plateau, so SASRec with 4 negatives ended at
            test 0.500 instead of 0.625. On data with many steps per epoch this changes nothing.
        n_negatives: sampled negatives per positive in implicit mode; default 1 (BPR, SASRec), 32 for MF-BCE, 4 for
            gSASRec. DEVIATION (gSASRec paper: 256 on ML-1M's 3.4k items): on ML-100K starec (1,142 training
            items, 800 sequences) the model first sits on a popularity-level plateau (valid NDCG@10 ≈ 0.50) that
            lasts longer the more negatives it gets — ≈ 400 steps with 4, still there after 1,000 steps with 32
            (test NDCG@10 0.495 vs 0.619 with 4, measured 2026-11-23).
        gbce_t: gSASRec calibration t; default 0.75 (paper's recommended value).
        full: train on every user's interactions (STARec Tab. 4 ``*_full``); starec only; default False.
        time_budget_s: stop training after this many seconds (shared CPU); default 300.
        seed: seed of initialisation, shuffling and negative sampling; default 0.
    """

    dim: int = 64
    n_layers: int | None = None
    n_heads: int = 1
    dropout: float = 0.2
    max_len: int = 50
    lr: float = 1e-3
    weight_decay: float | None = None
    batch_size: int | None = None
    epochs: int = 200
    patience: int = 5
    patience_steps: int = 300
    n_negatives: int | None = None
    gbce_t: float = 0.75
    full: bool = False
    time_budget_s: float = 300.0
    seed: int = 0


# ----------------------------------------------------------------------------------------------------- losses

def bce_loss(pos_logits: torch.Tensor, neg_logits: torch.Tensor | None = None,
             labels: torch.Tensor | None = None) -> torch.Tensor:
    """BCE. Pointwise: ``pos_logits`` (B,) with ``labels`` (B,). Implicit: positives (B,) vs negatives (B, K)."""
    if labels is not None:
        return F.binary_cross_entropy_with_logits(pos_logits, labels)
    return -(F.logsigmoid(pos_logits) + F.logsigmoid(-neg_logits).sum(-1)).mean()


def bpr_loss(pos_logits: torch.Tensor, neg_logits: torch.Tensor) -> torch.Tensor:
    """BPR: −mean log σ(s⁺ − s⁻); pos (B,), neg (B, K) (every negative paired with its positive)."""
    return -F.logsigmoid(pos_logits[:, None] - neg_logits).mean()


def gbce_loss(pos_logits: torch.Tensor, neg_logits: torch.Tensor, n_items: int, t: float) -> torch.Tensor:
    """gBCE (gSASRec Eq. 10-11): −[β log σ(s⁺) + Σ_K log(1 − σ(s⁻))]; pos (B,), neg (B, K)."""
    k = neg_logits.shape[-1]
    alpha = k / max(n_items - 1, 1)
    beta = alpha * (t * (1 - 1 / alpha) + 1 / alpha)
    return -(beta * F.logsigmoid(pos_logits) + F.logsigmoid(-neg_logits).sum(-1)).mean()


def ce_loss(all_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy over all items; logits (B, n_items) with the padding column masked, targets (B,)."""
    all_logits = all_logits.clone()
    all_logits[:, 0] = float("-inf")
    return F.cross_entropy(all_logits, targets)


def patience_epochs(patience: int, patience_steps: int, steps_per_epoch: int) -> int:
    """Epochs without validation gain before early stopping: ``patience``, or more if those hold fewer than
    ``patience_steps`` optimizer steps (small data, few steps per epoch)."""
    return max(patience, -(-patience_steps // max(steps_per_epoch, 1)))


# -------------------------------------------------------------------------------------------------- estimator

class BaselineRecommender:
    """One classic baseline: ``fit`` → ``score`` / ``score_candidates`` / ``user_embeddings`` / ``item_embeddings``.

    The constructor stores; ``fit`` builds the model (sizes come from the data) and trains it (scikit-learn style).
    Fitted state ends in ``_``: ``model_``, ``history_`` (validation metric per epoch), ``best_epoch_``.
    """

    def __init__(self, name: str, cfg: BaselineConfig | None = None, protocol_kind: str = "pointwise"):
        self.name = name
        self.cfg = cfg
        self.protocol_kind = protocol_kind

    # -- set-up
    def _resolved(self) -> BaselineConfig:
        if self.name not in BASELINES:
            raise ConfigError(f"baseline model '{self.name}' is unknown; choose one of {', '.join(BASELINES)}")
        cfg = self.cfg or BaselineConfig()
        seq = self.name in _SEQUENTIAL
        upd = {}
        if cfg.n_layers is None:
            upd["n_layers"] = 3 if self.name == "lightgcn" else 2
        if cfg.weight_decay is None:
            upd["weight_decay"] = 0.0 if seq else 1e-5
        if cfg.batch_size is None:
            if self.protocol_kind == "ranking":
                upd["batch_size"] = 128
            else:
                upd["batch_size"] = 256 if seq else 1024
        if cfg.n_negatives is None:
            upd["n_negatives"] = {"mf": 32, "gsasrec": 4}.get(self.name, 1)
        return cfg.model_copy(update=upd)

    def _build(self, data: TrainData, cfg: BaselineConfig):
        cls, _ = BASELINES[self.name]
        if cls is Pop:
            return Pop(data.n_users, data.n_items)
        if cls is MF:
            return MF(data.n_users, data.n_items, cfg.dim)
        if cls is LightGCN:
            return LightGCN(data.n_users, data.n_items, cfg.dim, cfg.n_layers)
        if cls is SASRec:
            return SASRec(data.n_users, data.n_items, cfg.dim, cfg.n_layers, cfg.n_heads, cfg.max_len, cfg.dropout)
        return GRU4Rec(data.n_users, data.n_items, cfg.dim, cfg.dropout)

    def _check_fitted(self):
        if not hasattr(self, "model_"):
            raise DataError(f"This {self.name} baseline is not fitted yet. Call 'fit' with training data first.")

    # -- training
    def _batch_loss(self, model, data: TrainData, idx: np.ndarray, rng: np.random.Generator,
                    cfg: BaselineConfig) -> torch.Tensor:
        u = torch.as_tensor(data.user_ids[idx])
        i = torch.as_tensor(data.item_ids[idx])
        h = torch.as_tensor(data.hist[idx])
        objective = BASELINES[self.name][1]
        if data.mode == "pointwise" and self.name != "bpr":
            return bce_loss(model.logits(u, h, i[:, None])[:, 0], labels=torch.as_tensor(data.labels[idx]))
        if objective == "ce":
            return ce_loss(model.user_emb(u, h) @ model.item_table().T, i)
        neg = torch.as_tensor(self._negatives(data, data.user_ids[idx], cfg.n_negatives, rng))
        s = model.logits(u, h, torch.cat([i[:, None], neg], 1))  # (B, 1 + K)
        pos, negs = s[:, 0], s[:, 1:]
        if objective == "bpr":
            return bpr_loss(pos, negs)
        if objective == "gbce":
            return gbce_loss(pos, negs, len(data.item_pool), cfg.gbce_t)
        return bce_loss(pos, negs)

    def _seq_batch_loss(self, model, data: TrainData, idx: np.ndarray, rng: np.random.Generator,
                        cfg: BaselineConfig) -> torch.Tensor:
        """Implicit mode, sequence models: every position of a window predicts its next item."""
        inp = torch.as_tensor(data.seq_inputs[idx])
        tgt_np = data.seq_targets[idx]
        mask = torch.as_tensor(tgt_np > 0)  # (B, L)
        h = model.states(inp)[mask]  # (P, d) over the P valid positions
        tgt = torch.as_tensor(tgt_np)[mask]
        objective = BASELINES[self.name][1]
        if objective == "ce":
            return ce_loss(h @ model.item_table().T, tgt)
        users = np.repeat(data.seq_users[idx], (tgt_np > 0).sum(1))
        neg = torch.as_tensor(self._negatives(data, users, cfg.n_negatives, rng))  # (P, K)
        table = model.item_table()
        pos = (h * table[tgt]).sum(-1)
        negs = torch.einsum("pd,pkd->pk", h, table[neg])
        if objective == "gbce":
            return gbce_loss(pos, negs, len(data.item_pool), cfg.gbce_t)
        return bce_loss(pos, negs)

    def _negatives(self, data: TrainData, users: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
        """(B, k) uniform training items, re-drawn (up to 5 times) where the user has interacted with them."""
        neg = rng.choice(data.item_pool, size=(len(users), k))
        for _ in range(5):
            keys = users[:, None] * data.n_items + neg
            pos = np.searchsorted(self.seen_keys_, keys).clip(max=len(self.seen_keys_) - 1)
            hit = self.seen_keys_[pos] == keys
            if not hit.any():
                break
            neg[hit] = rng.choice(data.item_pool, size=int(hit.sum()))
        return neg

    def _valid_metric(self, valid: EvalSet) -> float:
        if valid.candidates is not None:
            return ndcg_at_k(self.score_candidates(valid.user_ids, valid.hist, valid.candidates), valid.pos_index, 10)
        return auc(valid.labels, self.score(valid.user_ids, valid.item_ids, valid.hist))

    def fit(self, data: TrainData, valid: EvalSet | None = None, progress: bool = False) -> BaselineRecommender:
        cfg = self._resolved()
        self.cfg_ = cfg
        torch.manual_seed(cfg.seed)
        rng = np.random.default_rng(cfg.seed)
        self.model_ = model = self._build(data, cfg)
        self.user_last_hist_ = data.user_last_hist
        self.history_: list[float] = []
        self.best_epoch_ = 0
        if isinstance(model, Pop):
            model.fit_counts(data.item_ids, data.labels, data.mode == "pointwise")
            model.eval()
            return self
        if isinstance(model, LightGCN):
            pos = data.labels > 0
            model.set_graph(data.user_ids[pos], data.item_ids[pos])
        seq_mode = data.mode == "implicit" and self.name in _SEQUENTIAL
        batch_loss = self._seq_batch_loss if seq_mode else self._batch_loss
        if seq_mode:
            rows = np.arange(len(data.seq_users))
        elif data.mode == "pointwise" and self.name == "bpr":
            rows = np.flatnonzero(data.labels > 0)  # BPR learns from the liked samples only
        else:
            rows = np.arange(len(data.user_ids))
        if isinstance(model, MF | LightGCN):
            model.zero_unseen(data.user_ids, data.item_ids)
        pos_rows = data.labels > 0
        self.seen_keys_ = np.unique(data.user_ids[pos_rows] * data.n_items + data.item_ids[pos_rows])
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        best, best_state, bad = -np.inf, None, 0
        patience = patience_epochs(cfg.patience, cfg.patience_steps, -(-len(rows) // cfg.batch_size))
        start = time.monotonic()
        bar = tqdm(range(cfg.epochs), desc=f"fit {self.name}", disable=not progress, leave=False)
        for epoch in bar:
            model.train()
            perm = rng.permutation(rows)
            for a in range(0, len(perm), cfg.batch_size):
                loss = batch_loss(model, data, perm[a:a + cfg.batch_size], rng, cfg)
                opt.zero_grad()
                loss.backward()
                opt.step()
            model.eval()
            if valid is None or len(valid) == 0:
                best_state, self.best_epoch_ = None, epoch
            else:
                metric = self._valid_metric(valid)
                self.history_.append(metric)
                bar.set_postfix(valid=f"{metric:.4f}")
                if metric > best:
                    best, best_state, bad, self.best_epoch_ = metric, copy.deepcopy(model.state_dict()), 0, epoch
                else:
                    bad += 1
                    if bad >= patience:
                        break
            if time.monotonic() - start > cfg.time_budget_s:
                break
        if best_state is not None:
            model.load_state_dict(best_state)
        model.eval()
        return self

    # -- inference
    def _hist(self, user_ids: np.ndarray, histories) -> torch.Tensor:
        if histories is None:  # sequence models fall back to each user's latest training history
            return torch.as_tensor(self.user_last_hist_[user_ids])
        return torch.as_tensor(pad_histories(histories, self.cfg_.max_len))

    @torch.no_grad()
    def _logits(self, user_ids, histories, item_ids: np.ndarray, batch: int = 4096) -> np.ndarray:
        self._check_fitted()
        user_ids = np.array(user_ids, dtype=np.int64)  # a writable copy (torch refuses read-only arrays)
        item_ids = np.array(item_ids, dtype=np.int64)
        h = self._hist(user_ids, histories)
        out = []
        for a in range(0, len(user_ids), batch):
            out.append(self.model_.logits(torch.as_tensor(user_ids[a:a + batch]), h[a:a + batch],
                                          torch.as_tensor(item_ids[a:a + batch])).numpy())
        return np.concatenate(out) if out else np.zeros((0, item_ids.shape[1]), dtype=np.float32)

    def score(self, user_ids, item_ids, histories=None) -> np.ndarray:
        """Probability-like scores σ(logit) per (user, item) row — for pointwise AUC protocols."""
        item_ids = np.asarray(item_ids, dtype=np.int64)[:, None]
        return 1.0 / (1.0 + np.exp(-self._logits(user_ids, histories, item_ids)[:, 0].astype(np.float64)))

    def score_candidates(self, user_ids, histories, candidate_ids) -> np.ndarray:
        """Raw scores [N, C] for ranking each row's candidate list (STARec protocol)."""
        return self._logits(user_ids, histories, np.asarray(candidate_ids, dtype=np.int64))

    @torch.no_grad()
    def user_embeddings(self) -> np.ndarray:
        """[n_users, d], row = user id (sequence models: encoding of the user's latest training history)."""
        self._check_fitted()
        n = self.user_last_hist_.shape[0]
        users = torch.arange(n)
        return self.model_.user_emb(users, torch.as_tensor(self.user_last_hist_)).numpy()

    @torch.no_grad()
    def item_embeddings(self) -> np.ndarray:
        """[n_items, d], row = item id (row 0 is padding)."""
        self._check_fitted()
        return self.model_.item_table().detach().numpy().copy()


def train_baseline(name: str, splits, tables, cfg: BaselineConfig | dict | None = None,
                   progress: bool = False, return_model: bool = False):
    """Fit baseline ``name`` on ``splits`` and return its test metrics.

    ``name`` is one of :data:`BASELINES`, optionally with the suffix ``_full`` (STARec Tab. 4: trained on every
    user's interactions). Returns :func:`~reasonrec.eval.metrics.pointwise_report` for pointwise protocols and
    :func:`~reasonrec.eval.metrics.ranking_report` (averaged over negative draws) for starec — with AUC, UAUC,
    LogLoss and ACC of the candidate rows (σ(logit) as probability; ranking losses leave it uncalibrated) — plus
    ``best_epoch`` and ``fit_seconds``; with ``return_model`` a tuple (metrics, fitted recommender).
    """
    if isinstance(cfg, dict):
        cfg = BaselineConfig(**cfg)
    cfg = cfg or BaselineConfig()
    base = name.lower()
    if base.endswith("_full"):
        base, cfg = base[: -len("_full")], cfg.model_copy(update={"full": True})
    rec = BaselineRecommender(base, cfg, protocol_kind=splits.kind)
    cfg = rec._resolved()
    data = build_train_data(splits, tables, cfg.max_len, full=cfg.full)
    if splits.kind == "ranking":
        valid = eval_set(splits.train, cfg.max_len)  # the training users' held-out positives (see data.py)
    else:
        valid = eval_set(splits.valid, cfg.max_len) if len(splits.valid) else None
    t0 = time.monotonic()
    rec.fit(data, valid, progress=progress)
    fit_s = time.monotonic() - t0
    test = eval_set(splits.test, cfg.max_len)
    if test.candidates is not None:
        scores = rec.score_candidates(test.user_ids, test.hist, test.candidates)
        out = ranking_report(scores, test.pos_index, draws=test.draws)
        # The same lists as pointwise rows (positive = 1, its 19 negatives = 0), as the CTR pipeline reports them.
        # Only the global metrics: the per-user NDCG of pointwise_report would clash with the list NDCG above.
        labels = np.zeros(test.candidates.shape, dtype=np.int64)
        labels[np.arange(len(labels)), test.pos_index] = 1
        probs = 1.0 / (1.0 + np.exp(-scores.astype(np.float64)))
        pw = pointwise_report(np.repeat(test.user_ids, labels.shape[1]), labels.ravel(), probs.ravel())
        out.update({k: pw[k] for k in ("auc", "uauc", "logloss", "acc")})
    else:
        out = pointwise_report(test.user_ids, test.labels, rec.score(test.user_ids, test.item_ids, test.hist))
    out = {k: round(float(v), 6) for k, v in out.items()}
    out.update(model=name, best_epoch=int(rec.best_epoch_), fit_seconds=round(fit_s, 2))
    return (out, rec) if return_model else out
