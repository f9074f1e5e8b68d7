"""Trained CTR backbones saved with what it takes to score a (user, item) request again (``reasonrec serve``).

Layout of a checkpoint folder (one per run, written by
:func:`reasonrec.methods.common.train_knowledge_backbones` with ``save_dir=``)::

    histories.pt              user_id → the history (item ids, ratings) of that user's latest sample in the run
    {variant}/features.pt     the FeatureBuilder's fitted state: feature map, category and demographic tables,
                              the id-keyed knowledge tables, and the item ids the tables know
    {variant}/{backbone}.pt   backbone name, CTRModelConfig fields and state_dict (first seed)

Everything is plain tensors, lists and dicts so that loading uses ``torch.load(weights_only=True)``: a
checkpoint cannot run code when it is read. Every file is written atomically.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .. import io
from ..errors import DataError
from .features import FeatureBuilder, FeatureMap, KnowledgeField


def _save(path: Path, obj) -> None:
    with io.atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _load(path: Path):
    if not path.is_file():
        raise DataError(f"CTR checkpoint {path} is missing; re-run the run's rec stage to write it")
    return torch.load(path, map_location="cpu", weights_only=True)


def save_features(path: Path, fb: FeatureBuilder, item_ids) -> None:
    fmap = dataclasses.asdict(fb.feature_map)
    _save(path, {"feature_map": fmap, "category_vocab": dict(fb.category_vocab_), "cat_table": fb.cat_table_,
                 "user_feat_table": fb.user_feat_table_, "knowledge_tables": dict(fb.knowledge_tables_),
                 "item_ids": torch.as_tensor(np.asarray(sorted(int(i) for i in item_ids)), dtype=torch.long)})


def load_features(path: Path) -> tuple[FeatureBuilder, set[int]]:
    """The FeatureBuilder as fitted at training time (same vocabularies, so the same ids mean the same rows),
    and the item ids it knows."""
    d = _load(path)
    fm = dict(d["feature_map"])
    fm["knowledge"] = tuple(KnowledgeField(**k) for k in fm["knowledge"])
    fb = FeatureBuilder.__new__(FeatureBuilder)
    fb.feature_map_ = FeatureMap(**fm)
    fb.category_vocab_ = d["category_vocab"]
    fb.cat_table_ = d["cat_table"]
    fb.user_feat_table_ = d["user_feat_table"]
    fb.knowledge_tables_ = d["knowledge_tables"]
    return fb, set(d["item_ids"].tolist())


def save_model(path: Path, backbone: str, model: torch.nn.Module, model_config) -> None:
    _save(path, {"backbone": backbone, "model_config": model_config.model_dump(mode="json"),
                 "state_dict": model.state_dict()})


def load_model(path: Path, fb: FeatureBuilder) -> torch.nn.Module:
    from .ctr import CTRModelConfig, build_ctr_model

    d = _load(path)
    model = build_ctr_model(d["backbone"], fb.feature_map, CTRModelConfig(**d["model_config"]))
    model.load_state_dict(d["state_dict"])
    return model.eval()


def save_histories(path: Path, samples: pd.DataFrame, history_len: int) -> None:
    """Each user's latest sample's history (what the backbone saw last for that user), right-padded."""
    last = samples.sort_values("timestamp", kind="stable").groupby("user_id").tail(1).sort_values("user_id")
    n = len(last)
    items = np.zeros((n, history_len), np.int64)
    ratings = np.zeros((n, history_len), np.float32)
    lens = np.zeros(n, np.int64)
    has_r = "hist_ratings" in last.columns
    for k, row in enumerate(last.itertuples()):
        h = list(row.hist_item_ids)[-history_len:] if history_len else []
        items[k, : len(h)] = h
        if has_r:
            ratings[k, : len(h)] = list(row.hist_ratings)[-len(h):] if h else []
        lens[k] = len(h)
    _save(path, {"user_ids": torch.from_numpy(last["user_id"].to_numpy(np.int64).copy()), "items": torch.from_numpy(items),
                 "ratings": torch.from_numpy(ratings), "lens": torch.from_numpy(lens)})


def load_histories(path: Path) -> dict[int, tuple[list[int], list[float]]]:
    d = _load(path)
    out = {}
    for u, h, r, n in zip(d["user_ids"].tolist(), d["items"].tolist(), d["ratings"].tolist(), d["lens"].tolist(),
                          strict=True):
        out[int(u)] = (h[:n], r[:n])
    return out
