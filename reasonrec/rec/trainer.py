"""Training loop of every CTR backbone: Adam, BCE on the logit, early stopping on validation AUC.

The model owns no optimizer and never moves itself: :func:`train_ctr` builds the optimizer, moves the model to
``cfg.device`` and keeps the best-validation-AUC weights (restored at the end). Auxiliary losses a model returns
(``aux_loss``, DIEN Eq. 8) are added to the BCE loss.
"""

from __future__ import annotations

import copy
import logging
import time
from typing import Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn
from tqdm.auto import tqdm

from ..config import Section
from ..eval import metrics as M
from .features import EncodedSamples, batch_to

log = logging.getLogger(__name__)


class CTRTrainConfig(Section):
    """Optimisation settings.

    Fields:
        lr: Adam learning rate; default 1e-3 (CoLLM/KAR CTR backbones; DIN code uses 1.0 with SGD — we follow
            the issue's Adam).
        weight_decay: L2 on all parameters via Adam; default 0.0.
        batch_size: training batch size; default 1024.
        eval_batch_size: default 8192.
        epochs: maximum epochs; default 20.
        patience: stop after this many epochs without a better validation AUC; default 2.
        seed: seeds parameter init and shuffling; default 0.
        device: ``cpu`` or ``cuda``; default ``cpu``.
        progress: show tqdm bars; default True.
    """

    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(1024, ge=1)
    eval_batch_size: int = Field(8192, ge=1)
    epochs: int = Field(20, ge=1)
    patience: int = Field(2, ge=1)
    seed: int = 0
    device: Literal["cpu", "cuda"] = "cpu"
    progress: bool = True


@torch.no_grad()
def predict(model: nn.Module, data: EncodedSamples, batch_size: int = 8192, device: str = "cpu") -> np.ndarray:
    """Probabilities sigmoid(logit) for every row of ``data``, in order."""
    model.eval()
    out = [torch.sigmoid(model(batch_to(b, device))["logit"]).float().cpu() for b in data.batches(batch_size)]
    return torch.cat(out).numpy() if out else np.zeros(0, np.float32)


def evaluate(model: nn.Module, data: EncodedSamples, batch_size: int = 8192, device: str = "cpu") -> dict:
    """AUC, UAUC, LogLoss, ACC (+ per-user NDCG@5 / MAP@5) of ``model`` on ``data``."""
    probs = predict(model, data, batch_size, device)
    return M.pointwise_report(data.user_ids, data.labels, probs)


def train_ctr(model: nn.Module, train: EncodedSamples, valid: EncodedSamples, cfg: CTRTrainConfig | None = None,
              test: EncodedSamples | None = None) -> dict:
    """Train ``model`` in place; returns metrics: ``valid/auc`` (best), test metrics as plain keys (``auc``,
    ``uauc``, ``logloss``, ``acc``…) when ``test`` is given, ``best_epoch``, ``epochs``, ``train_seconds``,
    ``train_samples_per_s``."""
    cfg = cfg or CTRTrainConfig()
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    model.to(cfg.device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    bce = nn.BCEWithLogitsLoss()
    best_auc, best_state, best_epoch, bad = -1.0, None, 0, 0
    seen, train_time, history = 0, 0.0, []
    # AUC needs both labels: without them every epoch would look "not better" and patience would stop training
    # after `patience` epochs with the last weights, silently. Train every epoch instead and say so.
    stop_early = len(valid) > 0 and len(np.unique(np.asarray(valid.labels))) == 2
    if not stop_early:
        log.warning("validation set has %d rows and not both labels: no early stopping, training all %d epochs",
                    len(valid), cfg.epochs)
    epoch = 0
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        t0 = time.perf_counter()
        total, n = 0.0, 0
        bar = tqdm(train.batches(cfg.batch_size, shuffle=True, generator=gen), disable=not cfg.progress,
                   total=(len(train) + cfg.batch_size - 1) // cfg.batch_size, desc=f"epoch {epoch}", leave=False)
        for batch in bar:
            batch = batch_to(batch, cfg.device)
            out = model(batch)
            loss = bce(out["logit"], batch["label"])
            if "aux_loss" in out:
                loss = loss + out["aux_loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(batch["label"])
            n += len(batch["label"])
        train_time += time.perf_counter() - t0
        seen += n
        if not stop_early:
            history.append({"epoch": epoch, "train_loss": total / max(n, 1), "valid_auc": None})
            continue
        val = evaluate(model, valid, cfg.eval_batch_size, cfg.device)
        history.append({"epoch": epoch, "train_loss": total / max(n, 1), "valid_auc": val["auc"]})
        log.info("epoch %d loss %.4f valid auc %.4f", epoch, total / max(n, 1), val["auc"])
        if val["auc"] > best_auc:
            best_auc, best_epoch, bad = val["auc"], epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            bad += 1
            if bad >= cfg.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    result: dict = {"valid/auc": best_auc if stop_early else None, "best_epoch": best_epoch if stop_early else epoch,
                    "epochs": epoch,
                    "train_seconds": round(train_time, 3), "train_samples_per_s": seen / max(train_time, 1e-9),
                    "history": history}
    if test is not None:
        result.update(evaluate(model, test, cfg.eval_batch_size, cfg.device))
    return result
