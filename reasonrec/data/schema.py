"""The canonical schema every reader produces and every protocol, model and method consumes.

Canonical tables (pandas DataFrames, stored as Parquet):

``interactions``  one row per (user, item) event
    user_id    int64    contiguous 1..n_users (0 is reserved for padding)
    item_id    int64    contiguous 1..n_items (0 is reserved for padding)
    rating     float32  explicit rating (1-5 stars), or 1.0 for implicit feedback
    timestamp  int64    unix seconds

``items``  one row per item_id, with text for prompts and encoders
    item_id, raw_item_id (str), title (str), categories (str, "|"-joined genres/categories),
    description (str, may be empty), brand (str, may be empty), year (Int64, may be missing)

``users``  one row per user_id
    user_id, raw_user_id (str), and demographics where the dataset has them:
    gender (str), age (Int64), occupation (str), zip (str)

Samples (the output of a split protocol; one DataFrame per split, Parquet):

pointwise (``collm``, ``kar``, ``tallrec``)
    user_id, item_id, rating, label (int8 0/1), timestamp,
    hist_item_ids (list<int64>, oldest first, at most ``history_len``),
    hist_ratings (list<float32>), hist_labels (list<int8>) — likes *and* dislikes,
    warm (bool; ``collm`` only: user and item both seen in train)
ranking (``starec``)
    user_id, item_id (the held-out positive), timestamp, hist_item_ids, hist_ratings, hist_labels,
    candidate_ids (list<int64>: the positive and the negatives, shuffled), draw (int: negative-draw index),
    and the target's rating and label

Every history holds only interactions strictly before the sample's timestamp (ties broken by the original
order in the raw file), so no sample can see its own label; and a (user, item) pair is one interaction (a repeated
one keeps its latest event, :mod:`reasonrec.data.canonical`), so no target is in its own history.
"""

from __future__ import annotations

INTERACTION_COLUMNS = ("user_id", "item_id", "rating", "timestamp")
ITEM_COLUMNS = ("item_id", "raw_item_id", "title", "categories", "description", "brand", "year")
USER_COLUMNS = ("user_id", "raw_user_id")
POINTWISE_COLUMNS = ("user_id", "item_id", "rating", "label", "timestamp", "hist_item_ids", "hist_ratings",
                     "hist_labels")
RANKING_COLUMNS = ("user_id", "item_id", "timestamp", "hist_item_ids", "hist_ratings", "hist_labels",
                   "candidate_ids", "draw")
SPLITS = ("train", "valid", "test")
PAD_ID = 0
