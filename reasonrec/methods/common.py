"""Parts the knowledge-augmentation methods (R4ec, KAR-style baselines, TrackRec's CTR side) share: the data
stage with an optional user/item subset, the prompt fields of users and items, and the
"knowledge tables → CTR backbones" loop.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import pandas as pd

from .. import io
from ..config import DataSection
from ..data import Splits, load_tables, make_splits
from ..data.tables import Tables
from ..errors import DataError
from ..llm.prompts import item_fields, sample_fields
from ..runs import RunDir, Stage, config_fields

Window = Literal["pre_sample", "train"]


@dataclass
class KnowledgeContext:
    """The samples a knowledge method works on, and the prompt fields of its users and items.

    ``window`` decides which interactions the LLM may read (R4ec issue 17, deviation 1):

    - ``pre_sample`` (default): only interactions strictly *before the earliest CTR sample the knowledge serves*.
      A user's prompt shows their last ``history_len`` interactions before their earliest sample (train or test);
      an item's prompt shows users who rated it before its earliest sample, each with the history before that
      rating. Construction cases are drawn from the same windows (the target is the window's last interaction),
      so no CTR sample's label — train or test — ever reaches the LLM. This is what KAR's code does
      (``preprocess/generate_data_and_prompt.py``: the LM history is ``item_seq[:lm_hist_idx]`` and CTR samples
      are ``range(lm_hist_idx, len)``).
    - ``train``: the former behaviour — a user's last train interactions (which include their own train CTR
      samples, i.e. their labels) and item neighbours from train rows. Kept for comparison only: the CTR model
      can read train labels from such features and what it learns does not transfer to test.
    """

    tables: Tables
    splits: Splits
    like_threshold: float
    history_len: int = 10
    pos_neg_users: int = 1
    seed: int = 0
    window: Window = "pre_sample"
    neighbour_history_len: int | None = None

    def __post_init__(self):
        self.domain = self.tables.domain if self.tables.domain in ("movie", "book", "music", "business") else "book"
        self._items = {int(r["item_id"]): r for r in self.tables.items.to_dict("records")}
        self._users = {int(r["user_id"]): r for r in self.tables.users.to_dict("records")}
        ev = self.tables.interactions[["user_id", "item_id", "rating", "timestamp"]]
        ev = ev.sort_values(["timestamp", "user_id", "item_id"], kind="stable").reset_index(drop=True)
        self._events = ev.assign(label=(ev["rating"] > self.like_threshold).astype(int))
        both = pd.concat([self.splits.train, self.splits.test])
        # the earliest CTR sample each user / item serves: the knowledge must come from strictly before it
        self.first_sample_ts = {side: both.groupby(f"{side}_id")["timestamp"].min().astype("int64").to_dict()
                                for side in ("user", "item")}
        self._by_user = {int(u): g for u, g in self._events.groupby("user_id", sort=False)}
        self._by_item = {int(i): g for i, g in self._events.groupby("item_id", sort=False)}

    def n_entities(self, side: str) -> int:
        return int(self.tables.users["user_id"].max() if side == "user" else self.tables.items["item_id"].max())

    def _fields(self, sample: dict[str, Any]) -> dict[str, Any]:
        return sample_fields(sample, self._items, self._users, like_threshold=self.like_threshold,
                             max_history=self.history_len)

    def _hist(self, rows: pd.DataFrame) -> list[dict[str, Any]]:
        """[TITLE, RATING] entries (R4ec's prompt format) of interaction rows."""
        return [{"title": str(self._items[int(i)]["title"]),
                 "rating": int(r) if float(r).is_integer() else float(r)}
                for i, r in zip(rows["item_id"], rows["rating"], strict=True)]

    def user_before(self, user_id: int, ts: int, n: int) -> pd.DataFrame:
        """The user's last ``n`` interactions strictly before ``ts``."""
        ev = self._by_user.get(int(user_id))
        if ev is None:
            return self._events.iloc[:0]
        return ev[ev["timestamp"] < ts].tail(n)

    def knowledge_rows(self, side: str, entity_id: int) -> dict[str, pd.DataFrame]:
        """The interactions a ``pre_sample`` prompt of this entity shows (what the leakage test checks):
        ``history`` for a user; ``pos`` / ``neg`` (the neighbours' ratings of the item) and ``pos_hist_k`` /
        ``neg_hist_k`` (their histories) for an item."""
        t0 = self.first_sample_ts[side][int(entity_id)]
        if side == "user":
            return {"history": self.user_before(entity_id, t0, self.history_len)}
        ev = self._by_item.get(int(entity_id), self._events.iloc[:0])
        rated = ev[ev["timestamp"] < t0]
        out: dict[str, pd.DataFrame] = {}
        n_hist = self.neighbour_history_len or self.history_len
        for key, label in (("pos", 1), ("neg", 0)):
            # the most recent raters before the item's first sample: the closest to when it is served
            part = rated[rated["label"] == label].tail(self.pos_neg_users)
            out[key] = part
            for k, r in enumerate(part.itertuples()):
                out[f"{key}_hist_{k}"] = self.user_before(r.user_id, r.timestamp, n_hist)
        return out

    def _item_fields_pre(self, item_id: int, rows: dict[str, pd.DataFrame]) -> dict[str, Any]:
        out = {"target": item_fields(self._items[item_id]), "like_threshold": self.like_threshold}
        for key in ("pos", "neg"):
            out[f"{key}_histories"] = [self._hist(rows[f"{key}_hist_{k}"]) for k in range(len(rows[key]))]
        return out

    def _item_neighbours(self, item_id: int, exclude: int | None = None) -> dict[str, list[list[dict]]]:
        """``train`` window: likers / dislikers among train rows (their last ``neighbour_history_len`` titles)."""
        train = self.splits.train
        rows = train[(train["item_id"] == item_id) & (train.index != exclude)]
        n_hist = self.neighbour_history_len or self.history_len
        out = {}
        for key, label in (("pos_histories", 1), ("neg_histories", 0)):
            part = rows[rows["label"] == label].head(self.pos_neg_users)
            out[key] = [[{"title": str(self._items[int(i)]["title"]), "rating": int(r)}
                         for i, r in zip(list(h)[-n_hist:], list(rr)[-n_hist:], strict=True)]
                        for h, rr in zip(part["hist_item_ids"], part["hist_ratings"], strict=True)]
        return out

    def cases(self, side: str, fraction: float) -> list[dict[str, Any]]:
        """One supervision case for a seeded ``fraction`` of the users (or items) — R4ec §4.1.5."""
        if self.window == "pre_sample":
            return self._cases_pre(side, fraction)
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

    def _cases_pre(self, side: str, fraction: float) -> list[dict[str, Any]]:
        """Construction cases inside the pre-sample windows. User: the target is the window's last interaction
        and the history the ones before it. Item: the target user is the most recent rater before the item's
        first sample (with their history before that rating); the liker / disliker shown are other raters."""
        rng = np.random.default_rng(self.seed)
        ids = np.sort(np.fromiter(self.first_sample_ts[side], dtype=np.int64))
        chosen = sorted(int(x) for x in rng.choice(ids, size=max(1, int(round(fraction * len(ids)))),
                                                   replace=False))
        out = []
        for eid in chosen:
            t0 = self.first_sample_ts[side][eid]
            if side == "user":
                window = self.user_before(eid, t0, self.history_len + 1)
                if len(window) < 2:
                    continue
                tgt = window.iloc[-1]
                hist = window[window["timestamp"] < tgt["timestamp"]].tail(self.history_len)
                if hist.empty:
                    continue
                sample = {"user_id": eid, "item_id": int(tgt["item_id"]), "hist_item_ids": hist["item_id"].tolist(),
                          "hist_ratings": hist["rating"].tolist(), "hist_labels": hist["label"].tolist()}
                out.append({"key": f"user:{eid}:{int(tgt['item_id'])}:{int(tgt['timestamp'])}",
                            "fields": self._fields(sample),
                            "label": int(tgt["label"])})
                continue
            ev = self._by_item.get(eid, self._events.iloc[:0])
            rated = ev[ev["timestamp"] < t0]
            if rated.empty:
                continue
            tgt = rated.iloc[-1]
            rest = rated.iloc[:-1]
            n_hist = self.neighbour_history_len or self.history_len
            fields = {"target": item_fields(self._items[eid]), "like_threshold": self.like_threshold,
                      "target_history": self._hist(self.user_before(tgt["user_id"], tgt["timestamp"],
                                                                    self.history_len))}
            for key, label in (("pos", 1), ("neg", 0)):
                part = rest[rest["label"] == label].tail(self.pos_neg_users)
                fields[f"{key}_histories"] = [self._hist(self.user_before(r.user_id, r.timestamp, n_hist))
                                              for r in part.itertuples()]
            if not fields["target_history"]:
                continue
            out.append({"key": f"item:{eid}:{int(tgt['user_id'])}", "fields": fields, "label": int(tgt["label"])})
        return out

    def entities(self, side: str) -> tuple[list[int], list[dict[str, Any]]]:
        """Every user (or item) of the samples, with the fields the actor sees (no target)."""
        if self.window == "pre_sample":
            ids = sorted(int(i) for i in self.first_sample_ts[side])
            if side == "user":
                fields = []
                for u in ids:
                    h = self.knowledge_rows("user", u)["history"]
                    fields.append(self._fields({"user_id": u, "hist_item_ids": h["item_id"].tolist(),
                                                "hist_ratings": h["rating"].tolist(),
                                                "hist_labels": h["label"].tolist()}))
                return ids, fields
            return ids, [self._item_fields_pre(i, self.knowledge_rows("item", i)) for i in ids]
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
    # data_dir is left out: the raw files' sha256 say whether the data changed, wherever it lives
    depends = {**config_fields(data, "dataset", "category", "protocol", "seed", "options", prefix="data."),
               **{f"raw/{name}": sha for name, sha in sorted(tables.checksums.items())}}
    if subset is not None:
        depends.update(config_fields(subset, "users", "items", prefix="subset."))
    st = run.stage("data", depends=depends)
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
    kw = {} if subset is None else {"history_len": subset.history_len, "pos_neg_users": subset.pos_neg_users,
                                    "window": subset.knowledge_window,
                                    "neighbour_history_len": subset.neighbour_history_len}
    return KnowledgeContext(tables, splits, threshold, seed=data.seed, **kw)


def pointwise_subset(splits: Splits, s, seed: int, protocol: str, *, warm_only: bool) -> dict[str, pd.DataFrame]:
    """The seeded LLM subset of a pointwise split (``collm``), as TrackRec and ThinkRec draw it.

    Samples with fewer than ``s.min_history`` history items are dropped and keyed ``train:<i>`` / ``test:<i>``;
    ``s.users`` users are drawn from those with train *and* test samples (``warm_only``: TrackRec, whose V and
    backbones are tested on the users they trained on) or from every test user (ThinkRec: warm and cold users);
    then ``s.train_samples`` / ``s.test_samples`` are drawn, kept in index order. ``s`` has ``users``,
    ``train_samples``, ``test_samples`` and ``min_history``."""
    rng = np.random.default_rng(seed)
    parts = {}
    for name, df in (("train", splits.train), ("test", splits.test)):
        df = df[df["hist_item_ids"].map(len) >= s.min_history]
        parts[name] = df.assign(sample=[f"{name}:{i}" for i in df.index])
    if s.users is not None:
        tests = parts["test"]["user_id"].unique()
        pool = np.intersect1d(parts["train"]["user_id"].unique(), tests) if warm_only else np.sort(tests)
        if s.users > len(pool):
            raise DataError(f"subset.users = {s.users} but only {len(pool)} users have "
                            f"{'train and test' if warm_only else 'test'} samples of protocol '{protocol}'; "
                            "lower subset.users")
        keep = rng.choice(pool, size=s.users, replace=False)
        for name in ("train", "test") if warm_only else ("test",):
            parts[name] = parts[name][parts[name]["user_id"].isin(keep)]
    for name, n in (("train", s.train_samples), ("test", s.test_samples)):
        if n is not None and n < len(parts[name]):
            parts[name] = parts[name].iloc[np.sort(rng.choice(len(parts[name]), size=n, replace=False))]
        if len(parts[name]) == 0 or parts[name]["label"].nunique() < 2:
            raise DataError(f"the {name} samples of the subset (users={s.users}, min_history={s.min_history}, "
                            f"seed {seed}) have {len(parts[name])} rows and one class at most; raise subset sizes")
    return {name: df.reset_index(drop=True) for name, df in parts.items()}


def pointwise_samples_stage(cfg, run: RunDir, *, warm_only: bool) -> tuple[KnowledgeContext, Splits]:
    """The ``samples`` stage of TrackRec and ThinkRec: :func:`pointwise_subset` of the protocol's splits, written
    once (fingerprinted by the subset fields and the seed), read back; returns the full-split context and the
    subset's splits (no validation rows: the LLM methods hold out their own)."""
    kctx = prepare_splits(cfg.data, run)
    st = run.stage("samples", after=["data"], depends=config_fields(
        cfg, "subset.users", "subset.train_samples", "subset.test_samples", "subset.min_history", "data.seed"))
    if not st.done:
        parts = pointwise_subset(kctx.splits, cfg.subset, cfg.data.seed, cfg.data.protocol, warm_only=warm_only)
        for name, df in parts.items():
            io.write_parquet(st.path / f"{name}.parquet", df)
        st.complete(["train.parquet", "test.parquet"])
    train, test = (pd.read_parquet(st.path / f"{n}.parquet") for n in ("train", "test"))
    return kctx, replace(kctx.splits, train=train, test=test, valid=kctx.splits.valid.iloc[:0])


def training_stage(run: RunDir, name: str, *, depends: dict[str, Any], after: list[str]) -> Stage:
    """Stage ``train/<name>``: one training whose folder is the trainer's output_dir, so a killed training
    resumes from its checkpoint and a changed fingerprint clears it (checkpoints included) before training again;
    its artifacts' checksums are what the stages that use the trained weights see. A folder of a reasonrec before
    training stages has no record of the config it was trained under: it is not trusted and trained again."""
    folder = run.root / "train" / name
    if folder.exists() and not any((folder / m).exists() for m in ("_SUCCESS.json", "_STARTED.json")):
        run.log(f"stage train/{name}: no record of the config it was trained under; training it again")
        shutil.rmtree(folder)
    return run.stage(f"train/{name}", depends=depends, after=after)


def holdout_last(train: pd.DataFrame, fraction: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split each user's chronologically last ``fraction`` of train samples off as validation (for protocols
    without a validation split, e.g. ``kar``); early stopping must never look at test. A user needs more than
    1 / ``fraction`` train samples to give one; when few users have that many (a sample of a few per user, as
    TrackRec's backbones train on) — the per-user rows are under half the requested share, or lack one of the
    labels, so AUC cannot rank epochs — the chronologically last ``fraction`` of all train samples is held out
    instead."""
    if fraction <= 0:
        return train, train.iloc[:0]
    ordered = train.sort_values(["user_id", "timestamp"], kind="stable")
    rank = ordered.groupby("user_id").cumcount()
    size = ordered.groupby("user_id")["user_id"].transform("size")
    is_valid = rank >= np.ceil(size * (1 - fraction))
    labels = ordered.loc[is_valid, "label"].nunique() if "label" in ordered else 2
    if (is_valid.sum() < len(ordered) * fraction / 2 or labels < 2) and len(train) >= 2:
        k = int(np.ceil(len(train) * fraction))
        by_time = train.sort_values("timestamp", kind="stable")
        return by_time.iloc[:-k].reset_index(drop=True), by_time.iloc[-k:].reset_index(drop=True)
    return ordered[~is_valid].reset_index(drop=True), ordered[is_valid].reset_index(drop=True)


def train_knowledge_backbones(splits: Splits, tables: Tables, variants: dict[str, dict | None], rec,
                              progress: bool = False, model_options: dict[str, dict] | None = None,
                              predictions: list[pd.DataFrame] | None = None, save_dir=None) -> dict:
    """Eq. 12: train every backbone of ``rec.backbones`` once per knowledge variant and seed on the same
    samples. A variant is ``None`` (no knowledge), ``{"user": table, "item": table}`` of vectors indexed by
    id (row 0 = padding), or ``{"sample": column, "dim": d}`` naming a column of the samples that holds one
    vector per row; vectors are fed through the backbone's connectors. Returns
    ``{backbone: {variant: {"auc", "logloss", "uauc", "acc" (means over seeds), "runs": [...]}}}``.
    ``model_options`` maps a variant to :class:`~reasonrec.rec.ctr.base.CTRModelConfig` fields (e.g. KAR's row
    uses ``{"connector": "hybrid"}``); other variants use the backbone defaults. If ``predictions`` is a list,
    every run's test predictions are appended to it (:func:`reasonrec.eval.results.prediction_frame`;
    ``sample`` = row position in ``splits.test``). If ``save_dir`` is given, every (backbone, variant) model of
    the first seed is saved there with what scoring needs (:mod:`reasonrec.rec.checkpoint`; read by
    ``reasonrec serve``)."""
    from pathlib import Path

    import torch

    from ..eval.results import prediction_frame
    from ..rec import checkpoint as ckpt
    from ..rec.ctr import CTRModelConfig, build_ctr_model
    from ..rec.features import FeatureBuilder, KnowledgeInput
    from ..rec.trainer import CTRTrainConfig, predict, train_ctr

    if splits.valid is not None and len(splits.valid):
        train, valid = splits.train, splits.valid
    else:
        train, valid = holdout_last(splits.train, rec.valid_fraction)
    results: dict[str, dict[str, Any]] = {b: {} for b in rec.backbones}
    save_dir = None if save_dir is None else Path(save_dir)
    if save_dir is not None:
        ckpt.save_histories(save_dir / "histories.pt", pd.concat([splits.train, splits.valid, splits.test]),
                            rec.history_len)
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
        if save_dir is not None:
            ckpt.save_features(save_dir / variant / "features.pt", fb, tables.items["item_id"])
        for backbone in rec.backbones:
            runs = []
            for seed in rec.seeds:
                torch.manual_seed(seed)
                opts = (model_options or {}).get(variant)
                mcfg = CTRModelConfig(**opts) if opts else CTRModelConfig()
                model = build_ctr_model(backbone, fb.feature_map, mcfg)
                cfg = CTRTrainConfig(seed=seed, epochs=rec.epochs, batch_size=rec.batch_size, progress=progress)
                m = train_ctr(model, enc["train"], enc["valid"], cfg, test=enc["test"])
                if predictions is not None:
                    test = enc["test"]
                    predictions.append(prediction_frame(backbone, variant, seed, test.user_ids, test.labels,
                                                        predict(model, test)))
                if save_dir is not None and seed == rec.seeds[0]:
                    ckpt.save_model(save_dir / variant / f"{backbone}.pt", backbone, model, mcfg)
                runs.append({k: m[k] for k in ("auc", "logloss", "uauc", "acc", "valid/auc", "best_epoch")})
            mean = {k: float(np.mean([r[k] for r in runs])) for k in ("auc", "logloss", "uauc", "acc")}
            results[backbone][variant] = {**mean, "runs": runs}
    return results
