"""Training data for the classic baselines, built from a protocol's :class:`~reasonrec.data.Splits`.

Two training modes, chosen by the protocol's kind:

``pointwise`` (``collm``, ``kar``, ``tallrec``)
    the labelled train samples themselves: (user, item, 0/1 label, history) — every model is trained with BCE on
    those labels (CoLLM/ThinkRec train MF, LightGCN and SASRec this way); BPR pairs the liked samples with random
    items.
``implicit`` (``starec``)
    next-item examples cut from each user's chronological sequence: (user, the items before position t, the item
    at t). Every interaction counts as implicit feedback (a watched movie), liked or not, as in SASRec/BPR on
    MovieLens. Users contribute only what the protocol lets them see: a test user's history before the held-out
    positive; a training user's history, whose held-out positive (with its 19 candidates from the ``train``
    split) is kept out of training and serves as the validation set for early stopping, because ``starec`` has
    no validation split. ``full=True`` (STARec Tab. 4 ``*_full``) adds every other user of the dataset with all
    their interactions, and uses the protocol users' whole interaction records before their target (not
    truncated to the protocol's last 40).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from reasonrec.data.schema import PAD_ID
from reasonrec.errors import DataError


def pad_histories(histories, max_len: int) -> np.ndarray:
    """Histories (lists, oldest first) → int64 [N, max_len], keeping the last ``max_len`` items, left-padded with 0.

    Left padding puts the most recent item at the last position, where SASRec reads its output.
    """
    if histories is None:
        return np.zeros((0, max_len), dtype=np.int64)
    if isinstance(histories, np.ndarray) and histories.ndim == 2 and histories.dtype.kind in "iu":
        h = histories[:, -max_len:].astype(np.int64)
        return np.pad(h, ((0, 0), (max_len - h.shape[1], 0))) if h.shape[1] < max_len else h
    out = np.full((len(histories), max_len), PAD_ID, dtype=np.int64)
    for r, h in enumerate(histories):
        if h is None:
            continue
        h = np.asarray(h, dtype=np.int64)[-max_len:]
        if len(h):
            out[r, max_len - len(h):] = h
    return out


@dataclass
class TrainData:
    """What a baseline is fitted on.

    Fields:
        mode: ``pointwise`` or ``implicit``.
        n_users / n_items: embedding table sizes (largest id + 1; id 0 is padding).
        user_ids, item_ids, labels: one training example per row (labels all 1 in implicit mode).
        hist: int64 [N, L] left-padded histories of the examples.
        user_last_hist: int64 [n_users, L], each user's most recent history seen in training (sequence models'
            user embeddings).
        item_pool: the item ids negatives are drawn from.
        seq_users, seq_inputs, seq_targets: implicit mode, for sequence models: windows of each user's sequence,
            int64 [S, L] left-padded, target[t] = the item after input[t] (0 = no target). SASRec-style
            all-position training sees the same (prefix → next item) pairs as the per-row examples, L× cheaper.
    """

    mode: str
    n_users: int
    n_items: int
    user_ids: np.ndarray
    item_ids: np.ndarray
    labels: np.ndarray
    hist: np.ndarray
    user_last_hist: np.ndarray
    item_pool: np.ndarray
    seq_users: np.ndarray | None = None
    seq_inputs: np.ndarray | None = None
    seq_targets: np.ndarray | None = None


def _windows(seqs: dict[int, np.ndarray], max_len: int):
    """Cut each sequence into input/target windows of ``max_len`` from the end (long ``full`` sequences give several)."""
    us, ins, tgs = [], [], []
    for u, s in seqs.items():
        for end in range(len(s), 1, -max_len):
            chunk = s[max(0, end - max_len - 1):end]
            us.append(u)
            ins.append(chunk[:-1])
            tgs.append(chunk[1:])
    return np.asarray(us, dtype=np.int64), pad_histories(ins, max_len), pad_histories(tgs, max_len)


@dataclass
class EvalSet:
    """Samples to score: pointwise (labels) or candidate lists (candidates, pos_index, draws)."""

    user_ids: np.ndarray
    hist: np.ndarray
    item_ids: np.ndarray | None = None
    labels: np.ndarray | None = None
    candidates: np.ndarray | None = None
    pos_index: np.ndarray | None = None
    draws: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.user_ids)


def eval_set(df: pd.DataFrame, max_len: int) -> EvalSet:
    """A split DataFrame (schema columns) → :class:`EvalSet`."""
    users = df["user_id"].to_numpy(np.int64)
    hist = pad_histories(df["hist_item_ids"].to_numpy(), max_len)
    if "candidate_ids" in df.columns:
        cands = np.stack([np.asarray(c, dtype=np.int64) for c in df["candidate_ids"]]) if len(df) else \
            np.zeros((0, 1), dtype=np.int64)
        pos = (cands == df["item_id"].to_numpy(np.int64)[:, None]).argmax(axis=1)
        draws = df["draw"].to_numpy() if "draw" in df.columns else None
        return EvalSet(users, hist, candidates=cands, pos_index=pos, draws=draws)
    return EvalSet(users, hist, item_ids=df["item_id"].to_numpy(np.int64),
                   labels=df["label"].to_numpy(np.int64))


def _sizes(tables, splits) -> tuple[int, int]:
    n_users = int(tables.interactions["user_id"].max()) + 1
    n_items = int(tables.interactions["item_id"].max()) + 1
    for df in (splits.train, splits.valid, splits.test):
        if len(df):
            n_users = max(n_users, int(df["user_id"].max()) + 1)
            n_items = max(n_items, int(df["item_id"].max()) + 1)
    return n_users, n_items


def _last_hist(n_users: int, users: np.ndarray, hist: np.ndarray, order_key: np.ndarray) -> np.ndarray:
    out = np.zeros((n_users, hist.shape[1]), dtype=np.int64)
    order = np.argsort(order_key, kind="stable")  # later rows overwrite earlier ones → the most recent wins
    out[users[order]] = hist[order]
    return out


def build_train_data(splits, tables, max_len: int, full: bool = False) -> TrainData:
    """Turn a protocol's splits (and, for ``full``, the whole interaction table) into :class:`TrainData`."""
    n_users, n_items = _sizes(tables, splits)
    if len(splits.train) == 0:
        raise DataError(f"baselines: the {splits.protocol!r} train split is empty; nothing to fit")
    if splits.kind == "pointwise":
        if full:
            raise DataError(f"baselines: `full` applies to the ranking protocol (starec); {splits.protocol!r} "
                            "already trains on all its users' train-period data — drop `full`")
        tr = splits.train
        users = tr["user_id"].to_numpy(np.int64)
        hist = pad_histories(tr["hist_item_ids"].to_numpy(), max_len)
        return TrainData("pointwise", n_users, n_items, users, tr["item_id"].to_numpy(np.int64),
                         tr["label"].to_numpy(np.float32), hist,
                         _last_hist(n_users, users, hist, tr["timestamp"].to_numpy()),
                         np.unique(tr["item_id"].to_numpy(np.int64)))

    # implicit (starec): one sequence per user, oldest first
    seqs: dict[int, np.ndarray] = {}
    targets = pd.concat([splits.train, splits.test])[["user_id", "timestamp"]].drop_duplicates("user_id")
    if full:
        ev = tables.interactions.sort_values(["user_id", "timestamp"], kind="stable")
        cut = targets.set_index("user_id")["timestamp"]
        t_user = cut.reindex(ev["user_id"]).to_numpy()
        keep = np.isnan(t_user) | (ev["timestamp"].to_numpy() < np.nan_to_num(t_user))
        for u, g in ev[keep].groupby("user_id", sort=True)["item_id"]:
            seqs[int(u)] = g.to_numpy(np.int64)
    else:
        for df in (splits.train, splits.test):
            for u, h in zip(df["user_id"].to_numpy(), df["hist_item_ids"].to_numpy(), strict=True):
                seqs.setdefault(int(u), np.asarray(h, dtype=np.int64))
    users, items, hists = [], [], []
    for u, s in seqs.items():
        n = len(s)
        if n == 0:
            continue
        users.append(np.full(n, u, dtype=np.int64))
        items.append(s)
        # prefix t holds s[:t]; built as a sliding window over a left-padded copy of the sequence
        padded = np.concatenate([np.zeros(max_len, dtype=np.int64), s])
        win = np.lib.stride_tricks.sliding_window_view(padded, max_len)[:n]
        hists.append(win)
    users_a, items_a, hist_a = np.concatenate(users), np.concatenate(items), np.concatenate(hists)
    last = np.zeros((n_users, max_len), dtype=np.int64)
    for u, s in seqs.items():
        last[u] = pad_histories([s], max_len)[0]
    su, si, st = _windows(seqs, max_len)
    return TrainData("implicit", n_users, n_items, users_a, items_a, np.ones(len(users_a), dtype=np.float32),
                     hist_a, last, np.unique(items_a), su, si, st)
