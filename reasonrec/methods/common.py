"""Parts the knowledge-augmentation methods (R4ec, KAR-style baselines, TrackRec's CTR side) share: the data
stage with an optional user/item subset, the prompt fields of users and items, and the
"knowledge tables → CTR backbones" loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .. import io
from ..config import DataSection
from ..data import Splits, load_tables, make_splits
from ..data.tables import Tables
from ..errors import DataError
from ..llm.prompts import item_fields, sample_fields
from ..runs import RunDir


@dataclass
class KnowledgeContext:
    """The samples a knowledge method works on, and the prompt fields of its users and items.

    Users are described by their *train* interactions only and items by the train samples that involve them,
    so the generated knowledge never sees a test label.
    """

    tables: Tables
    splits: Splits
    like_threshold: float
    history_len: int = 10
    pos_neg_users: int = 3
    seed: int = 0

    def __post_init__(self):
        self.domain = self.tables.domain if self.tables.domain in ("movie", "book", "music", "business") else "book"
        self._items = {int(r["item_id"]): r for r in self.tables.items.to_dict("records")}
        self._users = {int(r["user_id"]): r for r in self.tables.users.to_dict("records")}

    def n_entities(self, side: str) -> int:
        return int(self.tables.users["user_id"].max() if side == "user" else self.tables.items["item_id"].max())

    def _fields(self, sample: dict[str, Any]) -> dict[str, Any]:
        return sample_fields(sample, self._items, self._users, like_threshold=self.like_threshold,
                             max_history=self.history_len)

    def _item_neighbours(self, item_id: int, exclude: int | None = None) -> dict[str, list[list[str]]]:
        train = self.splits.train
        rows = train[(train["item_id"] == item_id) & (train.index != exclude)]
        out = {}
        for key, label in (("pos_histories", 1), ("neg_histories", 0)):
            part = rows[rows["label"] == label].head(self.pos_neg_users)
            out[key] = [[str(self._items[int(i)]["title"]) for i in list(h)[-5:]] for h in part["hist_item_ids"]]
        return out

    def cases(self, side: str, fraction: float) -> list[dict[str, Any]]:
        """One supervision case for a seeded ``fraction`` of the users (or items) — R4ec §4.1.5."""
        rng = np.random.default_rng(self.seed)
        train = self.splits.train
        col = "user_id" if side == "user" else "item_id"
        ids = np.sort(train[col].unique())
        chosen = rng.choice(ids, size=max(1, int(round(fraction * len(ids)))), replace=False)
        out = []
        for eid in sorted(int(x) for x in chosen):
            rows = train[train[col] == eid]
            idx = rows.index[rng.integers(len(rows))]
            sample = train.loc[idx].to_dict()
            fields = self._fields(sample)
            if side == "item":
                fields = {"target": fields["target"], "target_history": fields["history"],
                          "like_threshold": self.like_threshold, **self._item_neighbours(eid, exclude=idx)}
            out.append({"key": f"{side}:{eid}:{idx}", "fields": fields, "label": int(sample["label"])})
        return out

    def entities(self, side: str) -> tuple[list[int], list[dict[str, Any]]]:
        """Every user (or item) of the samples, with the fields the actor sees (no target)."""
        train = self.splits.train
        if side == "user":
            last = train.sort_values("timestamp", kind="stable").groupby("user_id").tail(1)
            ids, fields = [], []
            for s in last.to_dict("records"):
                hist = {"user_id": s["user_id"],
                        "hist_item_ids": [*s["hist_item_ids"], s["item_id"]],
                        "hist_ratings": [*s["hist_ratings"], s["rating"]],
                        "hist_labels": [*s["hist_labels"], s["label"]]}
                ids.append(int(s["user_id"]))
                fields.append(self._fields(hist))
            return ids, fields
        ids = sorted(int(i) for i in pd.concat([train, self.splits.test])["item_id"].unique())
        fields = [{"target": item_fields(self._items[i]), "like_threshold": self.like_threshold,
                   **self._item_neighbours(i)} for i in ids]
        return ids, fields


def _subset(splits: Splits, users: int | None, items: int | None, seed: int) -> Splits:
    train, test = splits.train, splits.test
    if users is not None:
        pool = np.sort(train["user_id"].unique())
        if users > len(pool):
            raise DataError(f"subset.users = {users} but the split has only {len(pool)} users with train samples")
        keep = np.random.default_rng(seed).choice(pool, size=users, replace=False)
        train, test = train[train["user_id"].isin(keep)], test[test["user_id"].isin(keep)]
    if items is not None:
        top = train["item_id"].value_counts().head(items).index
        train, test = train[train["item_id"].isin(top)], test[test["item_id"].isin(top)]
    for name, part in (("train", train), ("test", test)):
        if part.empty:
            raise DataError(f"subset users={users}, items={items} (seed {seed}) leaves no {name} samples of "
                            f"protocol '{splits.protocol}'; raise subset.users or subset.items")
    return Splits(train=train.reset_index(drop=True), valid=splits.valid.iloc[:0], test=test.reset_index(drop=True),
                  protocol=splits.protocol, options=splits.options, seed=splits.seed, dataset=splits.dataset,
                  checksums=splits.checksums)


def prepare_splits(data: DataSection, run: RunDir, subset=None) -> KnowledgeContext:
    """The ``data`` stage: raw files → protocol samples (→ subset), saved in the run directory; the manifest
    records the raw files' checksums."""
    tables = load_tables(data.dataset, data.data_dir, category=data.category)
    st = run.stage("data")
    if st.done:
        splits = Splits.load(st.path / "splits")
    else:
        splits = make_splits(tables, data.protocol, seed=data.seed, **data.options)
        if subset is not None:
            splits = _subset(splits, subset.users, subset.items, data.seed)
        splits.save(st.path / "splits")
        io.write_json(st.path / "stats.json", splits.stats())
        st.complete(["splits", "stats.json"])
    run.write_manifest(tables.checksums)
    threshold = float(getattr(splits.options, "label_threshold", None) or 3.0)
    kw = {} if subset is None else {"history_len": subset.history_len, "pos_neg_users": subset.pos_neg_users}
    return KnowledgeContext(tables, splits, threshold, seed=data.seed, **kw)


def holdout_last(train: pd.DataFrame, fraction: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split each user's chronologically last ``fraction`` of train samples off as validation (for protocols
    without a validation split, e.g. ``kar``); early stopping must never look at test."""
    if fraction <= 0:
        return train, train.iloc[:0]
    ordered = train.sort_values(["user_id", "timestamp"], kind="stable")
    rank = ordered.groupby("user_id").cumcount()
    size = ordered.groupby("user_id")["user_id"].transform("size")
    is_valid = rank >= np.ceil(size * (1 - fraction))
    return ordered[~is_valid].reset_index(drop=True), ordered[is_valid].reset_index(drop=True)


def train_knowledge_backbones(splits: Splits, tables: Tables, variants: dict[str, dict | None], rec,
                              progress: bool = False) -> dict:
    """Eq. 12: train every backbone of ``rec.backbones`` once per knowledge variant and seed on the same
    samples. A variant is ``None`` (no knowledge), ``{"user": table, "item": table}`` of vectors indexed by
    id (row 0 = padding), or ``{"sample": column, "dim": d}`` naming a column of the samples that holds one
    vector per row; vectors are fed through the backbone's connectors. Returns
    ``{backbone: {variant: {"auc", "logloss", "uauc", "acc" (means over seeds), "runs": [...]}}}``."""
    import torch

    from ..rec.ctr import build_ctr_model
    from ..rec.features import FeatureBuilder, KnowledgeInput
    from ..rec.trainer import CTRTrainConfig, train_ctr

    if splits.valid is not None and len(splits.valid):
        train, valid = splits.train, splits.valid
    else:
        train, valid = holdout_last(splits.train, rec.valid_fraction)
    results: dict[str, dict[str, Any]] = {b: {} for b in rec.backbones}
    for variant, vectors in variants.items():
        if vectors is None:
            knowledge = []
        elif "sample" in vectors:  # a column of the samples, one vector per row (TrackRec's CoT per sample)
            knowledge = [KnowledgeInput(vectors["sample"], "sample", dim=int(vectors["dim"]))]
        else:
            knowledge = [KnowledgeInput("user_knowledge", "user_id", vectors["user"]),
                         KnowledgeInput("item_knowledge", "item_id", vectors["item"])]
        fb = FeatureBuilder(tables.items, tables.users, history_len=rec.history_len, knowledge=knowledge)
        enc = {name: fb.encode(df, where=f"{variant}/{name}") for name, df in
               (("train", train), ("valid", valid), ("test", splits.test))}
        for backbone in rec.backbones:
            runs = []
            for seed in rec.seeds:
                torch.manual_seed(seed)
                model = build_ctr_model(backbone, fb.feature_map)
                cfg = CTRTrainConfig(seed=seed, epochs=rec.epochs, batch_size=rec.batch_size, progress=progress)
                m = train_ctr(model, enc["train"], enc["valid"], cfg, test=enc["test"])
                runs.append({k: m[k] for k in ("auc", "logloss", "uauc", "acc", "valid/auc", "best_epoch")})
            mean = {k: float(np.mean([r[k] for r in runs])) for k in ("auc", "logloss", "uauc", "acc")}
            results[backbone][variant] = {**mean, "runs": runs}
    return results
