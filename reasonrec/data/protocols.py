"""The four split protocols: (tables, seed, options) → train / valid / test samples.

Each protocol reproduces the published preprocessing of the papers that use it; ``None`` options take the
dataset's documented preset (``defaults()`` of each options class). Every history follows one rule
(:mod:`reasonrec.data.history`): the user's last ``history_len`` interactions strictly before the sample's
timestamp, likes and dislikes both, with their ratings and labels.

- ``collm`` — CoLLM (Zhang et al., 2023), used by TrackRec and ThinkRec. Source: CoLLM's
  ``dataset/ml-1m/processing_ood.ipynb`` and ``dataset/amazon_book/processing_ood.ipynb``.
- ``kar`` — KAR (Xi et al., 2023), used by R4ec (R4ec §4.1.1).
- ``starec`` — STARec (CIKM'25 §5.1.1), following LLMRank / AgentCF: leave-one-out ranking against 19 negatives.
- ``tallrec`` — TALLRec (Bao et al., 2023), ``preprocess_movie.py`` of SAI990323/TALLRec.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from ..config import Section
from ..errors import ConfigError, DataError
from .history import attach_history, sort_events
from .tables import Tables

_MONTH = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")


@dataclass
class ProtocolResult:
    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame
    pool: pd.DataFrame  # the interactions the protocol kept (the "dataset" its paper's statistics describe)
    info: dict[str, Any]


def _labelled(tables: Tables, threshold: float) -> pd.DataFrame:
    ev = tables.interactions.copy()
    ev["label"] = (ev["rating"] > threshold).astype(np.int8)
    return ev


def _month_index(ts: pd.Series | np.ndarray) -> np.ndarray:
    dt = pd.to_datetime(np.asarray(ts), unit="s")  # UTC, as CoLLM's notebook (pd.to_datetime(unit='s'))
    return (dt.year.to_numpy() * 12 + dt.month.to_numpy() - 1).astype(np.int64)


def _parse_month(value: str, field: str) -> int:
    if not _MONTH.match(value):
        raise ConfigError(f"collm option '{field}': expected 'YYYY-MM', got {value!r}")
    y, m = value.split("-")
    return int(y) * 12 + int(m) - 1


def _month_str(index: int) -> str:
    return f"{index // 12:04d}-{index % 12 + 1:02d}"


# =====================================================================  collm

class CollmOptions(Section):
    """Options of the ``collm`` protocol (time-split pointwise CTR samples).

    Fields:
        label_threshold: label = rating > threshold. Default: 3 (ML, Yelp: "ratings > 3", ThinkRec §4.1.1;
            CoLLM notebook ``x>=4``), 4 for Amazon (label = 5 stars, CoLLM's Book notebook ``x>=5``).
        train_months / valid_months / test_months: inclusive ``["YYYY-MM", "YYYY-MM"]`` ranges (UTC months).
            ML-1M preset: CoLLM notebook slots 14–23 / 24–28 / 29–33 counted from 2000-04, i.e. 2001-06..2002-03,
            2002-04..2002-08, 2002-09..2003-01 (the last, partial month 2003-02 is dropped, as in the notebook).
            ML-100K: 1997-09..1998-01 / 1998-02..03 / 1998-04. Amazon: year Y (2017 for Books as CoLLM/ThinkRec;
            other categories the last year with December data), months 1–10 train, 11–12 held out. Yelp (ThinkRec):
            2010–2019 train, 2020–2021 held out. Other datasets: first half of the months train, next quarter
            valid, last quarter test.
        heldout: ``months`` (valid and test by their month ranges) or ``halve`` (valid_months == test_months; the
            held-out interactions sorted by time, first half valid, second half test, as CoLLM's Book notebook).
            Default: ``halve`` for Amazon and Yelp, else ``months``.
        min_interactions: keep users and items with at least this many interactions inside the kept months
            (one pass, both counted before either filter, as CoLLM's notebook). Default 20 for Amazon Books and
            Yelp (ThinkRec §4.1.1: "fewer than 20" removed; DEVIATION: CoLLM's notebook keeps ``> 20``), else 0.
        history_len: interactions in each history; default 10 (issue 3: "the previous 10 interactions").
        history_positive_only: draw histories from liked interactions only, as CoLLM's notebook does; default
            False (DEVIATION, on purpose: TrackRec/ThinkRec prompts show likes *and* dislikes).
    """

    label_threshold: float | None = None
    train_months: tuple[str, str] | None = None
    valid_months: tuple[str, str] | None = None
    test_months: tuple[str, str] | None = None
    heldout: Literal["months", "halve"] | None = None
    min_interactions: int | None = None
    history_len: int = 10
    history_positive_only: bool = False

    def defaults(self, tables: Tables) -> CollmOptions:
        d: dict[str, Any] = {}
        ds = tables.dataset
        if ds == "ml-1m":
            d = dict(train_months=("2001-06", "2002-03"), valid_months=("2002-04", "2002-08"),
                     test_months=("2002-09", "2003-01"), heldout="months", label_threshold=3.0, min_interactions=0)
        elif ds == "ml-100k":
            d = dict(train_months=("1997-09", "1998-01"), valid_months=("1998-02", "1998-03"),
                     test_months=("1998-04", "1998-04"), heldout="months", label_threshold=3.0, min_interactions=0)
        elif ds == "amazon":
            months = _month_index(tables.interactions["timestamp"])
            decembers = sorted({m // 12 for m in np.unique(months) if m % 12 == 11})
            year = 2017 if tables.category == "Books" else (decembers[-1] if decembers else int(months.max() // 12))
            d = dict(train_months=(f"{year}-01", f"{year}-10"), valid_months=(f"{year}-11", f"{year}-12"),
                     test_months=(f"{year}-11", f"{year}-12"), heldout="halve", label_threshold=4.0,
                     min_interactions=20 if tables.category == "Books" else 0)
        elif ds == "yelp":
            d = dict(train_months=("2010-01", "2019-12"), valid_months=("2020-01", "2021-12"),
                     test_months=("2020-01", "2021-12"), heldout="halve", label_threshold=3.0, min_interactions=20)
        else:
            months = np.unique(_month_index(tables.interactions["timestamp"]))
            lo, hi = int(months.min()), int(months.max())
            n = hi - lo + 1
            t_end = lo + max(1, n // 2) - 1
            v_end = min(hi - 1, t_end + max(1, n // 4)) if hi > t_end + 1 else t_end
            d = dict(train_months=(_month_str(lo), _month_str(t_end)),
                     valid_months=(_month_str(min(t_end + 1, hi)), _month_str(max(v_end, t_end + 1))),
                     test_months=(_month_str(min(v_end + 1, hi)), _month_str(hi)), heldout="months",
                     label_threshold=3.0, min_interactions=0)
        return self.model_copy(update={k: v for k, v in d.items() if getattr(self, k) is None})


def collm(tables: Tables, seed: int, o: CollmOptions) -> ProtocolResult:
    del seed  # fully determined by time
    ev = _labelled(tables, o.label_threshold)
    month = _month_index(ev["timestamp"])
    rng = {name: (_parse_month(a, name), _parse_month(b, name))
           for name, (a, b) in (("train_months", o.train_months), ("valid_months", o.valid_months),
                                ("test_months", o.test_months))}
    lo = min(r[0] for r in rng.values())
    hi = max(r[1] for r in rng.values())
    keep = (month >= lo) & (month <= hi)
    ev, month = ev[keep], month[keep]
    if o.min_interactions:
        uc = ev.groupby("user_id")["item_id"].transform("size").to_numpy()
        ic = ev.groupby("item_id")["user_id"].transform("size").to_numpy()
        ok = (uc >= o.min_interactions) & (ic >= o.min_interactions)
        ev, month = ev[ok], month[ok]
    if len(ev) == 0:
        raise DataError(f"collm on {tables.name}: no interactions left in {_month_str(lo)}..{_month_str(hi)} with "
                        f"min_interactions={o.min_interactions}; change train_months/test_months or lower "
                        "min_interactions")

    def in_range(name):
        a, b = rng[name]
        return (month >= a) & (month <= b)

    split = np.full(len(ev), "", dtype=object)
    split[in_range("train_months")] = "train"
    if o.heldout == "halve":
        held = np.flatnonzero(in_range("valid_months") & (split == ""))
        order = held[np.argsort(ev["timestamp"].to_numpy()[held], kind="stable")]
        half = len(order) // 2
        split[order[:half]] = "valid"
        split[order[half:]] = "test"
    else:
        split[in_range("valid_months") & (split == "")] = "valid"
        split[in_range("test_months") & (split == "")] = "test"
    ev = ev[split != ""].assign(split=split[split != ""])
    source = ev[ev["label"] == 1] if o.history_positive_only else ev
    samples = attach_history(sort_events(ev), source, o.history_len)
    tr = samples[samples["split"] == "train"]
    warm = samples["user_id"].isin(tr["user_id"].unique()) & samples["item_id"].isin(tr["item_id"].unique())
    samples = samples.assign(warm=warm.to_numpy())
    parts = {s: samples[samples["split"] == s].drop(columns="split").reset_index(drop=True)
             for s in ("train", "valid", "test")}
    pool = ev.drop(columns="split")
    info = {"months": {k: [_month_str(a), _month_str(b)] for k, (a, b) in rng.items()},
            # CoLLM / TrackRec Tab. 1 report max remapped id + 1, i.e. counting the padding id 0
            "user_vocab": int(pool["user_id"].nunique()) + 1, "item_vocab": int(pool["item_id"].nunique()) + 1,
            "valid_warm_rate": float(parts["valid"]["warm"].mean()) if len(parts["valid"]) else None,
            "test_warm_rate": float(parts["test"]["warm"].mean()) if len(parts["test"]) else None}
    return ProtocolResult(parts["train"], parts["valid"], parts["test"], pool, info)


# =====================================================================  kar

class KarOptions(Section):
    """Options of the ``kar`` protocol (per-user chronological 80/20 pointwise samples).

    Fields:
        label_threshold: label = rating > threshold; default 3 (ML-1M, R4ec §4.1.1), 4 for Amazon (KAR's
            ``rating_threshold = 4`` for ``amz``).
        train_fraction: the first fraction of each user's interactions (chronological) is train; default 0.8.
        split: ``per_user`` (issue 3: "first 80% of a user's interactions") or ``global`` (R4ec's text: "sort all
            interaction behaviors in chronological order and take the first 80%"); default ``per_user``.
        min_history: samples start after the user's first ``min_history`` interactions; default 10.
        history_len: previous interactions in each history; default 10 (KAR ``ctr_hist_len = 10``).
        user_core / item_core: keep users with ≥ user_core and items with ≥ item_core interactions, repeated until
            both hold (k-core). Default 60 / 40 for Amazon Books (KAR's and R4ec's ``preprocess/preprocess_amz.py``:
            ``user_core = 60``, ``item_core = 40``, for R4ec Tab. 1's Amazon-Book), 0 / 0 otherwise (KAR's
            ``preprocess_ml-1m.py`` filters nothing; smaller Amazon categories would keep no user at 60).
    """

    label_threshold: float | None = None
    train_fraction: float = 0.8
    split: Literal["per_user", "global"] = "per_user"
    min_history: int = 10
    history_len: int = 10
    user_core: int | None = None
    item_core: int | None = None

    def defaults(self, tables: Tables) -> KarOptions:
        amazon = tables.dataset == "amazon"
        books = amazon and tables.category == "Books"  # the k-core of KAR/R4ec was set for Amazon-Books only
        d = {"label_threshold": 4.0 if amazon else 3.0, "user_core": 60 if books else 0,
             "item_core": 40 if books else 0}
        return self.model_copy(update={k: v for k, v in d.items() if getattr(self, k) is None})


def kar(tables: Tables, seed: int, o: KarOptions) -> ProtocolResult:
    del seed
    if not 0 < o.train_fraction < 1:
        raise ConfigError(f"kar option 'train_fraction' must be in (0, 1); got {o.train_fraction}")
    ev = _labelled(tables, o.label_threshold)
    while o.user_core or o.item_core:  # KAR's filter_Kcore: drop until every user and item has enough
        ok = ((ev.groupby("user_id")["item_id"].transform("size") >= o.user_core)
              & (ev.groupby("item_id")["user_id"].transform("size") >= o.item_core))
        if ok.all():
            break
        ev = ev[ok]
    if len(ev) == 0:
        raise DataError(f"kar on {tables.name}: the {o.user_core}/{o.item_core} user/item core leaves no "
                        "interactions; lower user_core / item_core")
    ev = sort_events(ev)
    pos = ev.groupby("user_id").cumcount().to_numpy()
    if o.split == "per_user":
        n = ev.groupby("user_id")["item_id"].transform("size").to_numpy()
        is_train = pos < np.floor(o.train_fraction * n)
    else:
        order = np.argsort(ev["timestamp"].to_numpy(), kind="stable")  # stable: ties keep file order
        rank = np.empty(len(ev), dtype=np.int64)
        rank[order] = np.arange(len(ev))
        is_train = rank < int(o.train_fraction * len(ev))
    samples = attach_history(ev[pos >= o.min_history], ev, o.history_len)
    is_train = is_train[pos >= o.min_history]
    train = samples[is_train].reset_index(drop=True)
    test = samples[~is_train].reset_index(drop=True)
    return ProtocolResult(train, samples.iloc[:0].reset_index(drop=True), test, ev, {})


# =====================================================================  tallrec

class TallrecOptions(Section):
    """Options of the ``tallrec`` protocol (TALLRec's ML-100K / BookCrossing few-shot samples).

    Fields:
        label_threshold: label = rating > threshold; default 3 (TALLRec ``int(rating) > 3``).
        history_len: previous interactions per sample; default 10 (TALLRec ``seq_len = 10``).
        max_samples: keep the last N samples of TALLRec's list (users in file order, each chronological);
            default 10000 (``sequential_interaction_list[-10000:]``).
        fractions: train / valid / test fractions of that list, taken in order; default (0.8, 0.1, 0.1).
        train_shots: few-shot training set size (TALLRec uses 16, 64, 256 …), sampled from train with the seed;
            default None (the whole train split).
    """

    label_threshold: float = 3.0
    history_len: int = 10
    max_samples: int = 10000
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    train_shots: int | None = None

    def defaults(self, tables: Tables) -> TallrecOptions:
        return self


def tallrec(tables: Tables, seed: int, o: TallrecOptions) -> ProtocolResult:
    if abs(sum(o.fractions) - 1) > 1e-6:
        raise ConfigError(f"tallrec option 'fractions' must sum to 1; got {list(o.fractions)}")
    ev = _labelled(tables, o.label_threshold)
    # TALLRec walks users in order of first appearance in the raw file, each sorted by timestamp (stable)
    first = pd.Series(np.arange(len(ev)), index=ev.index).groupby(ev["user_id"]).transform("min")
    ev = ev.assign(_first=first.to_numpy()).sort_values(["_first", "timestamp"], kind="stable").drop(columns="_first")
    pos = ev.groupby("user_id").cumcount().to_numpy()
    cand = ev[pos >= o.history_len]
    cand = cand.iloc[max(0, len(cand) - o.max_samples):]
    samples = attach_history(cand, ev, o.history_len).reset_index(drop=True)
    n = len(samples)
    a, b = int(n * o.fractions[0]), int(n * (o.fractions[0] + o.fractions[1]))
    train, valid, test = samples.iloc[:a], samples.iloc[a:b], samples.iloc[b:]
    if o.train_shots is not None:
        if o.train_shots > len(train):
            raise ConfigError(f"tallrec option 'train_shots'={o.train_shots} exceeds the {len(train)} training "
                              "samples")
        pick = np.sort(np.random.default_rng(seed).choice(len(train), o.train_shots, replace=False))
        train = train.iloc[pick]
    return ProtocolResult(train.reset_index(drop=True), valid.reset_index(drop=True), test.reset_index(drop=True),
                          ev, {"candidates_before_cut": int((pos >= o.history_len).sum())})


# =====================================================================  starec

class StarecOptions(Section):
    """Options of the ``starec`` protocol (leave-one-out ranking of 1 positive among 20 candidates).

    Fields:
        label_threshold: label = rating > threshold; default 3 (STARec §5.1.1 "ratings exceeding 3").
        min_interactions: users and items with fewer interactions are removed, repeatedly until none is left
            (k-core, the "standard practice" of §5.1.1); default 10, except 5 for Amazon categories other than
            Books / CDs_and_Vinyl (their 2018 "5-core" files hold too few 10-core users to sample from).
        max_seq_len: each user's sequence is truncated to its last N interactions; default 40.
        min_seq_len: sampled users need at least this many interactions after truncation. Default 40 for ML-1M
            (STARec Tab. 3: 1,000 users ↔ 40,000 interactions means every sampled user has the full 40), else
            ``min_interactions``.
        n_train_users / n_test_users: users sampled (seeded, disjoint). Default 1000 / 1000 for ML-1M (§5.1.1),
            400 / 400 for ML-100K (issue 3), else min(1000, eligible // 2).
        n_negatives: random items the user never interacted with, ranked with the positive; default 19.
        n_draws: negative draws per test user (the paper averages 3 runs); default 3. Training users get 1.
        target: ``last_positive`` (default: the user's most recent liked item is the held-out positive, since the
            protocol ranks a positive) or ``last`` (the last item whatever its rating).
    """

    label_threshold: float = 3.0
    min_interactions: int | None = None
    max_seq_len: int = 40
    min_seq_len: int | None = None
    n_train_users: int | None = None
    n_test_users: int | None = None
    n_negatives: int = 19
    n_draws: int = 3
    target: Literal["last_positive", "last"] = "last_positive"

    def defaults(self, tables: Tables) -> StarecOptions:
        d: dict[str, Any] = {"min_interactions": 10}
        if tables.dataset == "ml-1m":
            d.update(min_seq_len=40, n_train_users=1000, n_test_users=1000)
        elif tables.dataset == "ml-100k":
            d.update(n_train_users=400, n_test_users=400)
        elif tables.dataset == "amazon" and tables.category not in ("Books", "CDs_and_Vinyl"):
            d["min_interactions"] = 5
        k = self.min_interactions if self.min_interactions is not None else d["min_interactions"]
        d.setdefault("min_seq_len", k)
        return self.model_copy(update={k: v for k, v in d.items() if getattr(self, k) is None})


def _kcore(ev: pd.DataFrame, k: int) -> pd.DataFrame:
    while k > 0:
        uc = ev.groupby("user_id")["item_id"].transform("size")
        ic = ev.groupby("item_id")["user_id"].transform("size")
        ok = (uc >= k) & (ic >= k)
        if ok.all():
            break
        ev = ev[ok]
    return ev


def starec(tables: Tables, seed: int, o: StarecOptions) -> ProtocolResult:
    full = _labelled(tables, o.label_threshold)
    ev = sort_events(_kcore(full, o.min_interactions))
    from_end = ev.groupby("user_id").cumcount(ascending=False).to_numpy()
    seq = ev[from_end < o.max_seq_len]
    seq_len = seq.groupby("user_id")["item_id"].size()
    if o.target == "last_positive":
        tgt = seq[seq["label"] == 1].groupby("user_id").tail(1)
    else:
        tgt = seq.groupby("user_id").tail(1)
    first_ts = seq.groupby("user_id")["timestamp"].min()
    tgt = tgt[tgt["timestamp"].to_numpy() > first_ts.reindex(tgt["user_id"]).to_numpy()]  # needs a history
    eligible = np.sort(tgt["user_id"][seq_len.reindex(tgt["user_id"]).to_numpy() >= o.min_seq_len].to_numpy())
    n_tr = o.n_train_users if o.n_train_users is not None else min(1000, len(eligible) // 2)
    n_te = o.n_test_users if o.n_test_users is not None else min(1000, len(eligible) // 2)
    if n_tr + n_te > len(eligible) or n_te == 0:
        raise DataError(f"starec on {tables.name}: {len(eligible)} users are eligible (≥ {o.min_seq_len} "
                        f"interactions after {o.min_interactions}-core filtering, with a liked target), but "
                        f"n_train_users + n_test_users = {n_tr + n_te}; lower them or min_seq_len")
    rng = np.random.default_rng(seed)
    chosen = rng.permutation(eligible)
    train_users, test_users = np.sort(chosen[:n_tr]), np.sort(chosen[n_tr:n_tr + n_te])
    items_pool = np.unique(ev["item_id"].to_numpy())
    seen = full.groupby("user_id")["item_id"].unique()
    tgt = tgt.set_index("user_id")

    def build(users: np.ndarray, draws: int) -> pd.DataFrame:
        rows = tgt.loc[users, ["item_id", "rating", "label", "timestamp"]].reset_index()
        rows = attach_history(rows, seq, o.max_seq_len)
        out = []
        for draw in range(draws):
            cands = []
            for u, pos_item in zip(rows["user_id"].to_numpy(), rows["item_id"].to_numpy(), strict=True):
                allowed = np.setdiff1d(items_pool, seen[u], assume_unique=True)
                if len(allowed) < o.n_negatives:
                    raise DataError(f"starec: user {u} has only {len(allowed)} unseen items for "
                                    f"{o.n_negatives} negatives")
                c = np.concatenate([[pos_item], rng.choice(allowed, o.n_negatives, replace=False)])
                cands.append(rng.permutation(c).astype(np.int64))
            part = rows.copy()
            part["candidate_ids"] = pd.Series(cands, index=part.index, dtype=object)
            part["draw"] = draw
            out.append(part)
        return pd.concat(out, ignore_index=True)

    train = build(train_users, 1)
    test = build(test_users, o.n_draws)
    pool = seq[seq["user_id"].isin(np.concatenate([train_users, test_users]))]
    tr_pool, te_pool = pool[pool["user_id"].isin(train_users)], pool[pool["user_id"].isin(test_users)]
    info = {"eligible_users": int(len(eligible)), "train_users": int(n_tr), "test_users": int(n_te),
            "train_interactions": len(tr_pool), "test_interactions": len(te_pool),
            "train_items": int(tr_pool["item_id"].nunique()), "test_items": int(te_pool["item_id"].nunique()),
            "candidates": o.n_negatives + 1, "draws": o.n_draws}
    return ProtocolResult(train, test.iloc[:0], test, pool, info)


PROTOCOLS = {
    "collm": (CollmOptions, collm),
    "kar": (KarOptions, kar),
    "starec": (StarecOptions, starec),
    "tallrec": (TallrecOptions, tallrec),
}
