"""Turn a reader's raw frames into the canonical tables of :mod:`reasonrec.data.schema`.

Raw ids (strings) are mapped to contiguous ids 1..n (0 stays the padding id). The order of the mapping is given
by the reader: MovieLens maps its numeric ids in numeric order (so ML-100K/ML-1M user ids keep their raw values),
Amazon and Yelp map ids in order of first appearance. Interactions keep the order of the raw file, which is the
tie-break the protocols use for equal timestamps.

A (user, item) pair is one interaction: a repeated review (Amazon keeps a user's second review of a product) is
reduced to the latest event, ties going to the later line. Otherwise the earlier copy would sit in the history
of the later one, and a sample's target would be in its own history. The count is ``duplicates_dropped``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import DataError
from .schema import ITEM_COLUMNS


def _id_map(order: pd.Index | list[str], name: str) -> pd.Series:
    order = pd.Index(pd.unique(pd.Index(order).astype(str)), name=name)
    return pd.Series(np.arange(1, len(order) + 1, dtype=np.int64), index=order)


def canonicalize(
    inter: pd.DataFrame,
    items: pd.DataFrame,
    users: pd.DataFrame | None,
    *,
    item_order: list[str] | pd.Index | None = None,
    user_order: list[str] | pd.Index | None = None,
    source: str = "",
    cleaning: dict | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Map raw ids and return (interactions, items, users) with the canonical columns and dtypes.

    ``inter`` has raw_user_id, raw_item_id (str), rating, timestamp; ``items`` has raw_item_id and text fields;
    ``users`` has raw_user_id and demographics. Items/users that interact but have no metadata row get an empty
    one (title ``item <raw id>``), so every id in ``interactions`` has a row in ``items``/``users``.
    ``cleaning``, if given, receives ``duplicates_dropped`` and adds the items so named to ``titles_from_id``.
    """
    if len(inter) == 0:
        raise DataError(f"{source}: no interactions were read; check that the file is the right one")
    raw_u = inter["raw_user_id"].astype(str)
    raw_i = inter["raw_item_id"].astype(str)
    u_order = pd.Index(user_order if user_order is not None else [], dtype=object).astype(str)
    i_order = pd.Index(item_order if item_order is not None else [], dtype=object).astype(str)
    # ids that appear in interactions but not in the given order are appended in order of appearance
    u_order = u_order.append(pd.Index(pd.unique(raw_u)).difference(u_order, sort=False))
    i_order = i_order.append(pd.Index(pd.unique(raw_i)).difference(i_order, sort=False))
    umap, imap = _id_map(u_order, "raw_user_id"), _id_map(i_order, "raw_item_id")

    interactions = pd.DataFrame({
        "user_id": umap.reindex(raw_u.to_numpy()).to_numpy(np.int64),
        "item_id": imap.reindex(raw_i.to_numpy()).to_numpy(np.int64),
        "rating": inter["rating"].to_numpy(np.float32),
        "timestamp": inter["timestamp"].to_numpy(np.int64),
    })
    interactions, dropped = drop_repeats(interactions)
    if cleaning is not None:
        cleaning["duplicates_dropped"] = dropped

    it = pd.DataFrame({"raw_item_id": imap.index.to_numpy(dtype=object), "item_id": imap.to_numpy()})
    meta = items.copy()
    meta["raw_item_id"] = meta["raw_item_id"].astype(str)
    meta = meta.drop_duplicates("raw_item_id", keep="last")  # Amazon 2018 metadata repeats some asins
    it = it.merge(meta, on="raw_item_id", how="left")
    for col in ("title", "categories", "description", "brand"):
        it[col] = it[col].fillna("").astype(str) if col in it else ""
    # every item has a title prompts can show: an item without one is named by its raw id (Amazon's reader has
    # done this already, trying the description first)
    untitled = it["title"].str.strip() == ""
    if untitled.any():
        it.loc[untitled, "title"] = "item " + it.loc[untitled, "raw_item_id"].astype(str)
    if cleaning is not None:
        cleaning["titles_from_id"] = cleaning.get("titles_from_id", 0) + int(untitled.sum())
    it["year"] = (pd.to_numeric(it["year"], errors="coerce") if "year" in it else pd.Series(np.nan, index=it.index)
                  ).astype("Int64")
    extra = [c for c in it.columns if c not in ITEM_COLUMNS]
    it = it[list(ITEM_COLUMNS) + extra]

    us = pd.DataFrame({"user_id": umap.to_numpy(), "raw_user_id": umap.index.to_numpy(dtype=object)})
    if users is not None and len(users):
        demo = users.copy()
        demo["raw_user_id"] = demo["raw_user_id"].astype(str)
        us = us.merge(demo.drop_duplicates("raw_user_id", keep="last"), on="raw_user_id", how="left")
        if "age" in us:
            us["age"] = pd.to_numeric(us["age"], errors="coerce").astype("Int64")
        for col in ("gender", "occupation", "zip"):
            if col in us:
                us[col] = us[col].fillna("").astype(str)
    return interactions, it.reset_index(drop=True), us.reset_index(drop=True)


def drop_repeats(interactions: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Keep the latest event of each (user, item) pair (ties: the later row), in the original row order."""
    pairs = ["user_id", "item_id"]
    if not interactions.duplicated(pairs).any():
        return interactions, 0
    # a stable sort by time keeps file order among equal timestamps, so "last" is the latest, then the later line
    by_time = interactions.iloc[np.argsort(interactions["timestamp"].to_numpy(), kind="stable")]
    keep = np.sort(by_time.drop_duplicates(pairs, keep="last").index.to_numpy())
    return interactions.loc[keep].reset_index(drop=True), len(interactions) - len(keep)
