"""Reader for Amazon review data, 2014 (McAuley et al., SIGIR'15) and 2018 (Ni, Li & McAuley, EMNLP'19) formats.

Reviews, one JSON object per line (plain or .gz), keys ``reviewerID``, ``asin``, ``overall``, ``unixReviewTime``
in both releases. File names tried for a category ``C``, in order: 2018 ``C_5.json(.gz)`` (5-core), ``C.json(.gz)``
(full); 2014 ``reviews_C_5.json(.gz)``, ``reviews_C.json(.gz)``.
Metadata ``meta_C.json(.gz)``: 2018 rows are JSON with ``title``, ``category`` (list), ``description`` (list of
paragraphs), ``brand``; 2014 rows are Python literals with ``title``, ``categories`` (list of lists),
``description`` (str), ``brand``. Only rows of reviewed items are kept, so ``meta_Books`` (3 M rows) stays cheap.

Why our own line loop rather than ``pandas.read_json``: it gives the line number of a truncated or malformed
line, reads the Python-literal 2014 metadata, and keeps only the four review fields in memory.

Every review field is checked (a null ``reviewerID`` would become a user named "None", ``overall: 99`` a rating).
Amazon 2018 metadata carries HTML: in some categories most titles are a fragment such as
``<span class="a-size-medium a-color-secondary"``, and descriptions keep ``<i>`` and ``<div class="aplus">``. Text
is extracted with the standard library's HTML parser (:func:`~reasonrec.data._parse.html_text`), and a title that
is no title falls back to the description's first sentence, else to ``item <asin>``; the counts go to
``Tables.cleaning``. A missing metadata file is a :class:`~reasonrec.data.DataWarning`.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from ..errors import DataError
from ._parse import (
    TextCleaner,
    is_title,
    iter_json_lines,
    json_id,
    json_rating,
    json_timestamp,
    placeholder_title,
    warn,
)

REVIEW_PATTERNS = ("{c}_5.json.gz", "{c}_5.json", "{c}.json.gz", "{c}.json",
                   "reviews_{c}_5.json.gz", "reviews_{c}_5.json", "reviews_{c}.json.gz", "reviews_{c}.json")
META_PATTERNS = ("meta_{c}.json.gz", "meta_{c}.json")
ITEM_COLUMNS = ["raw_item_id", "title", "categories", "description", "brand", "year"]
# the noun a prompt uses for an item of the category ("Given the user's history of <domain>s ...")
DOMAINS = {"Books": "book", "Kindle_Store": "e-book", "Movies_and_TV": "movie", "CDs_and_Vinyl": "music album",
           "Digital_Music": "song", "Video_Games": "video game", "Gift_Cards": "gift card"}


def find_files(folder: Path, category: str) -> tuple[Path | None, Path | None]:
    review = next((folder / p.format(c=category) for p in REVIEW_PATTERNS if (folder / p.format(c=category)).is_file()),
                  None)
    meta = next((folder / p.format(c=category) for p in META_PATTERNS if (folder / p.format(c=category)).is_file()),
                None)
    return review, meta


def _short(text: str, limit: int = 80) -> str:
    """The first sentence of ``text``, cut at a word boundary: a stand-in title."""
    first = re.split(r"(?<=[.!?])\s", text, maxsplit=1)[0]
    if len(first) > limit:
        first = first[:limit].rsplit(" ", 1)[0].rstrip(",;:-") + "..."
    return first


def read_reviews(path: Path) -> pd.DataFrame:
    users, items, ratings, times = [], [], [], []
    for i, obj in iter_json_lines(path, "review"):
        where = f"{path}:{i}"
        try:
            user, item = obj["reviewerID"], obj["asin"]
            rating, ts = obj["overall"], obj["unixReviewTime"]
        except KeyError as err:
            raise DataError(f"{where}: review has no {err.args[0]!r} field; expected reviewerID, asin, overall, "
                            "unixReviewTime") from None
        users.append(json_id(user, "reviewerID", where))
        items.append(json_id(item, "asin", where))
        ratings.append(json_rating(rating, "overall", where))
        times.append(json_timestamp(ts, "unixReviewTime", where))
    return pd.DataFrame({"raw_user_id": users, "raw_item_id": items, "rating": ratings, "timestamp": times})


def read_meta(path: Path, wanted: set[str], cleaning: dict | None = None) -> pd.DataFrame:
    """Metadata rows of the ``wanted`` asins, text extracted from HTML; a title that is no title
    (:func:`is_title`) is replaced by the description's first sentence, else by ``item <asin>``.

    ``cleaning`` receives the counts: ``html_values`` (field values that held markup), ``titles_from_description``,
    ``titles_from_id``, ``metadata_rows_repeated`` (extra rows of an asin; the last one is kept).
    """
    clean = TextCleaner()
    rows: dict[str, dict] = {}
    repeated = 0
    for i, obj in iter_json_lines(path, "product"):
        where = f"{path}:{i}"
        if obj.get("asin") is None:
            raise DataError(f"{where}: metadata row has no 'asin'")
        asin = json_id(obj["asin"], "asin", where)
        if asin not in wanted:
            continue
        repeated += asin in rows
        rows[asin] = {"raw_item_id": asin, "title": clean.text(obj.get("title"), "title", where),
                      "categories": clean.categories(obj, where),
                      "description": clean.text(obj.get("description"), "description", where),
                      "brand": clean.text(obj.get("brand"), "brand", where), "year": None}
    from_desc = from_id = 0
    for row in rows.values():  # counted once per kept row, so a repeated asin is not counted twice
        if is_title(row["title"]):
            continue
        if is_title(row["description"]):
            row["title"] = _short(row["description"])
            from_desc += 1
        else:
            row["title"] = placeholder_title(row["raw_item_id"])
            from_id += 1
    if cleaning is not None:
        cleaning.update(html_values=clean.html_values, titles_from_description=from_desc, titles_from_id=from_id,
                        metadata_rows_repeated=repeated)
    return pd.DataFrame(list(rows.values()), columns=ITEM_COLUMNS)


def read_amazon(folder: Path, category: str) -> dict:
    review, meta = find_files(folder, category)
    if review is None:
        raise FileNotFoundError(category)
    inter = read_reviews(review)
    wanted = set(inter["raw_item_id"])
    cleaning: dict = {"html_values": 0, "titles_from_description": 0, "titles_from_id": 0,
                      "metadata_rows_repeated": 0}
    if meta is None:
        warn(f"{folder}: no metadata file for {category} (looked for "
             f"{', '.join(p.format(c=category) for p in META_PATTERNS)}); the {len(wanted)} items get the "
             f"placeholder title 'item <asin>' and no categories — put meta_{category}.json.gz beside {review.name}")
        items = pd.DataFrame(columns=ITEM_COLUMNS)
    else:
        items = read_meta(meta, wanted, cleaning)
    missing = sorted(wanted - set(items["raw_item_id"]))
    if meta is not None and len(missing) > len(wanted) / 2:
        warn(f"{meta}: has no row for {len(missing)} of the {len(wanted)} reviewed items; is it the metadata of "
             f"{review.name}? Those items get the placeholder title 'item <asin>'")
    if missing:
        stub = pd.DataFrame({"raw_item_id": missing, "title": [placeholder_title(a) for a in missing],
                             "categories": "", "description": "", "brand": "", "year": None}, columns=ITEM_COLUMNS)
        items = pd.concat([items, stub], ignore_index=True) if len(items) else stub
    cleaning["items_without_metadata"] = len(missing)
    cleaning["titles_from_id"] += len(missing)
    files = [review] + ([meta] if meta is not None else [])
    return {"interactions": inter, "items": items, "users": None, "files": files,
            "item_order": None, "user_order": None, "cleaning": cleaning}
