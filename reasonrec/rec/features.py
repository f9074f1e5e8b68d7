"""From sample DataFrames (``reasonrec.data.schema``) to the tensors every CTR backbone reads.

A :class:`FeatureMap` is the schema a model is built from (FuxiCTR's ``FeatureMap`` idea: models get a schema,
not a dataset): vocabulary sizes of the ID fields, the user demographic fields present, the history length and
the dense knowledge fields with their sizes. A :class:`FeatureBuilder` is fitted once on the canonical tables and
turns any split's samples into :class:`EncodedSamples`, which yields batches as dicts of tensors:

==================  ============  ==========================================================================
key                 shape         meaning
==================  ============  ==========================================================================
``user_id``         (B,)          int64, 1..n_users (0 = padding / unknown)
``item_id``         (B,)          int64 target item, 1..n_items
``item_cats``       (B, C)        int64 category ids of the target item, 0-padded
``user_feats``      (B, U)        int64 one id per demographic field (gender, age, occupation), 0 = missing
``hist_item_ids``   (B, L)        int64 most recent L history items, oldest first, right-padded with 0
``hist_mask``       (B, L)        bool, True at real history positions
``hist_ratings``    (B, L)        int64 rating level 0..5 of each history item (side information)
``hist_cats``       (B, L, C)     int64 category ids of the history items
``knowledge``       {name: (B,d)} float32 dense knowledge vectors, one entry per knowledge field
``label``           (B,)          float32 0/1
==================  ============  ==========================================================================

Knowledge fields are keyed by ``user_id`` or ``item_id`` (a table with one row per id, row 0 = padding, looked
up at batch time so the vectors are stored once) or by ``sample`` (a column of the samples DataFrame holding
one vector per row, e.g. a chain-of-thought written for that very sample).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
import torch

from ..errors import DataError

KnowledgeKey = Literal["user_id", "item_id", "sample"]
DEMOGRAPHIC_FIELDS = ("gender", "age", "occupation")
RATING_LEVELS = 6  # ratings rounded to 0..5; 0 also stands for "no rating" (implicit data gives 1.0)


@dataclass(frozen=True)
class KnowledgeField:
    """A dense knowledge field: ``name``, what it is keyed by, and the vector size ``dim``."""

    name: str
    key: KnowledgeKey
    dim: int


@dataclass(frozen=True)
class KnowledgeInput:
    """Knowledge handed to :class:`FeatureBuilder`.

    ``table`` is an (n_entities + 1, d) array indexed by ``user_id``/``item_id`` (row 0 = padding) for the id-keyed
    kinds; for ``key="sample"`` leave it ``None``: the vectors come from the samples column named ``name``, and
    ``dim`` must be given.
    """

    name: str
    key: KnowledgeKey
    table: np.ndarray | None = None
    dim: int | None = None


@dataclass(frozen=True)
class FeatureMap:
    """Everything a model needs to size its layers (no data)."""

    n_users: int
    n_items: int
    n_categories: int
    max_categories: int
    user_fields: dict[str, int] = field(default_factory=dict)  # name -> vocabulary size (incl. 0 = missing)
    history_len: int = 20
    rating_levels: int = RATING_LEVELS  # 0 = do not use history ratings as side information
    knowledge: tuple[KnowledgeField, ...] = ()


def _pad_lists(values: pd.Series, length: int, dtype) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded (N, length) array of the *last* ``length`` elements of each list, and its (N,) lengths."""
    lists = [np.asarray(v if v is not None else (), dtype=dtype) for v in values]
    n = len(lists)
    out = np.zeros((n, length), dtype=dtype)
    lens = np.zeros(n, dtype=np.int64)
    for i, arr in enumerate(lists):
        arr = arr[-length:] if length else arr[:0]
        out[i, : len(arr)] = arr
        lens[i] = len(arr)
    return out, lens


class FeatureBuilder:
    """Fitted on the canonical ``items``/``users`` tables (and knowledge); encodes sample DataFrames.

    Args:
        items: the ``items`` table (``item_id``, ``categories`` "|"-joined).
        users: the ``users`` table; demographic columns in :data:`DEMOGRAPHIC_FIELDS` are used when present.
        history_len: keep the most recent ``history_len`` history items of each sample (CoLLM uses 10;
            default 20).
        hist_ratings: feed each history item's rating level as side information (likes *and* dislikes are in
            the history, so the rating says which is which).
        knowledge: dense knowledge fields (see :class:`KnowledgeInput`).
        use_demographics: use the users table's demographic columns as ID fields.
    """

    def __init__(self, items: pd.DataFrame, users: pd.DataFrame | None = None, *, history_len: int = 20,
                 hist_ratings: bool = True, knowledge: list[KnowledgeInput] | tuple = (),
                 use_demographics: bool = True, n_users: int | None = None):
        if "item_id" not in items.columns:
            raise DataError(f"items table: missing column 'item_id'; got columns {list(items.columns)}")
        n_items = int(items["item_id"].max()) if len(items) else 0
        cats = (items["categories"].fillna("") if "categories" in items.columns
                else pd.Series([""] * len(items), index=items.index))
        split = [[c for c in str(s).split("|") if c] for s in cats]
        vocab = {c: i + 1 for i, c in enumerate(sorted({c for cs in split for c in cs}))}
        max_c = max([len(cs) for cs in split] + [1])
        cat_table = np.zeros((n_items + 1, max_c), dtype=np.int64)
        for iid, cs in zip(items["item_id"].to_numpy(), split, strict=True):
            cat_table[int(iid), : len(cs)] = [vocab[c] for c in cs]
        self.category_vocab_ = vocab
        self.cat_table_ = torch.from_numpy(cat_table)

        if n_users is None:
            n_users = int(users["user_id"].max()) if users is not None and len(users) else 0
        user_fields: dict[str, int] = {}
        feats = []
        if use_demographics and users is not None:
            for name in DEMOGRAPHIC_FIELDS:
                if name not in users.columns or users[name].isna().all():
                    continue
                col = users[name].astype("string")
                levels = sorted(col.dropna().unique())
                idx = {v: i + 1 for i, v in enumerate(levels)}
                table = np.zeros(n_users + 1, dtype=np.int64)
                ok = col.notna().to_numpy()
                table[users["user_id"].to_numpy()[ok]] = [idx[v] for v in col[ok]]
                user_fields[name] = len(levels) + 1
                feats.append(table)
        self.user_feat_table_ = (torch.from_numpy(np.stack(feats, axis=1)) if feats
                                 else torch.zeros((n_users + 1, 0), dtype=torch.long))

        fields, tables = [], {}
        for k in knowledge:
            if k.key == "sample":
                if k.dim is None:
                    raise DataError(f"knowledge field '{k.name}': key 'sample' needs dim=")
                fields.append(KnowledgeField(k.name, "sample", int(k.dim)))
                continue
            if k.key not in ("user_id", "item_id") or k.table is None:
                raise DataError(f"knowledge field '{k.name}': key must be user_id, item_id or sample and an "
                                f"id-keyed field needs a table; got key={k.key!r}, table={type(k.table).__name__}")
            need = (n_users if k.key == "user_id" else n_items) + 1
            t = np.asarray(k.table, dtype=np.float32)
            if t.ndim != 2 or t.shape[0] < need:
                raise DataError(f"knowledge field '{k.name}': table shape {t.shape} must be (>= {need}, d): one row "
                                f"per {k.key} 0..{need - 1} (row 0 = padding)")
            tables[k.name] = torch.from_numpy(t)
            fields.append(KnowledgeField(k.name, k.key, t.shape[1]))
        self.knowledge_tables_ = tables
        self.feature_map_ = FeatureMap(
            n_users=n_users, n_items=n_items, n_categories=len(vocab) + 1, max_categories=max_c,
            user_fields=user_fields, history_len=history_len,
            rating_levels=RATING_LEVELS if hist_ratings else 0, knowledge=tuple(fields),
        )

    @property
    def feature_map(self) -> FeatureMap:
        return self.feature_map_

    def encode(self, df: pd.DataFrame, *, where: str = "samples") -> EncodedSamples:
        """Turn one split's pointwise samples into tensors (ids beyond the fitted vocabulary become 0)."""
        fm = self.feature_map_
        for col in ("user_id", "item_id", "label", "hist_item_ids"):
            if col not in df.columns:
                raise DataError(f"{where}: missing column '{col}'; pointwise samples need "
                                f"user_id, item_id, label, hist_item_ids (reasonrec.data.schema)")
        users = df["user_id"].to_numpy(np.int64)
        items = df["item_id"].to_numpy(np.int64)
        users = np.where((users >= 0) & (users <= fm.n_users), users, 0)
        items = np.where((items >= 0) & (items <= fm.n_items), items, 0)
        hist, lens = _pad_lists(df["hist_item_ids"], fm.history_len, np.int64)
        hist = np.where(hist <= fm.n_items, hist, 0)
        if "hist_ratings" in df.columns:
            ratings, _ = _pad_lists(df["hist_ratings"], fm.history_len, np.float32)
        else:
            ratings = np.zeros_like(hist, dtype=np.float32)
        levels = np.clip(np.rint(ratings), 0, RATING_LEVELS - 1).astype(np.int64)
        mask = np.arange(fm.history_len)[None, :] < lens[:, None]
        t = {
            "user_id": torch.from_numpy(users),
            "item_id": torch.from_numpy(items),
            "hist_item_ids": torch.from_numpy(hist),
            "hist_mask": torch.from_numpy(mask),
            "hist_ratings": torch.from_numpy(levels * mask),
            "label": torch.from_numpy(df["label"].to_numpy(np.float32)),
        }
        sample_knowledge = {}
        for f in fm.knowledge:
            if f.key != "sample":
                continue
            if f.name not in df.columns:
                raise DataError(f"{where}: knowledge field '{f.name}' is keyed by sample but the samples have no "
                                f"column '{f.name}'")
            arr = np.stack([np.asarray(v, dtype=np.float32) for v in df[f.name]]) if len(df) else \
                np.zeros((0, f.dim), np.float32)
            if arr.shape[1:] != (f.dim,):
                raise DataError(f"{where}: column '{f.name}' holds vectors of shape {arr.shape[1:]}, expected ({f.dim},)")
            sample_knowledge[f.name] = torch.from_numpy(arr)
        return EncodedSamples(t, sample_knowledge, self)


class EncodedSamples:
    """One split as tensors; :meth:`batches` gathers category ids, demographics and knowledge per batch."""

    def __init__(self, tensors: dict[str, torch.Tensor], sample_knowledge: dict[str, torch.Tensor],
                 builder: FeatureBuilder):
        self.tensors = tensors
        self.sample_knowledge = sample_knowledge
        self.builder = builder

    def __len__(self) -> int:
        return int(self.tensors["label"].shape[0])

    @property
    def labels(self) -> np.ndarray:
        return self.tensors["label"].numpy()

    @property
    def user_ids(self) -> np.ndarray:
        return self.tensors["user_id"].numpy()

    def batch(self, index: torch.Tensor) -> dict:
        b = self.builder
        t = {k: v[index] for k, v in self.tensors.items()}
        t["item_cats"] = b.cat_table_[t["item_id"]]
        t["hist_cats"] = b.cat_table_[t["hist_item_ids"]]
        t["user_feats"] = b.user_feat_table_[t["user_id"]]
        know = {}
        for f in b.feature_map_.knowledge:
            if f.key == "sample":
                know[f.name] = self.sample_knowledge[f.name][index]
            else:
                know[f.name] = b.knowledge_tables_[f.name][t[f.key]]
        t["knowledge"] = know
        return t

    def batches(self, batch_size: int, *, shuffle: bool = False,
                generator: torch.Generator | None = None) -> Iterator[dict]:
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        for start in range(0, n, batch_size):
            yield self.batch(order[start : start + batch_size])


def batch_to(batch: Mapping, device: torch.device | str) -> dict:
    """Move a batch (nested dict of tensors) to ``device``."""
    out = {}
    for k, v in batch.items():
        out[k] = batch_to(v, device) if isinstance(v, Mapping) else v.to(device)
    return out


def explode_candidates(df: pd.DataFrame) -> pd.DataFrame:
    """Ranking samples (``starec``: one row per list, ``candidate_ids``) → pointwise rows, one per candidate.

    Adds ``label`` (1 for the held-out positive ``item_id``), ``list_id`` (row position of the list) and keeps
    ``draw``; rows come list by list in candidate order, so scores reshape to (n_lists, n_candidates).
    """
    if "candidate_ids" not in df.columns:
        raise DataError("ranking samples: missing column 'candidate_ids' (reasonrec.data.schema RANKING_COLUMNS)")
    sizes = df["candidate_ids"].map(len).to_numpy()
    if len(df) and (sizes != sizes[0]).any():
        raise DataError(f"ranking samples: candidate lists differ in length ({sorted(set(sizes.tolist()))}); "
                        f"every list must have the same number of candidates")
    base = df.drop(columns=["candidate_ids"]).reset_index(drop=True)
    out = base.loc[base.index.repeat(sizes)].reset_index(drop=True)
    out["list_id"] = np.repeat(np.arange(len(df)), sizes)
    cands = np.concatenate([np.asarray(c, dtype=np.int64) for c in df["candidate_ids"]]) if len(df) else \
        np.zeros(0, np.int64)
    out["label"] = (cands == out["item_id"].to_numpy()).astype(np.int8)
    out["item_id"] = cands
    return out
