"""Reader for Amazon review data, 2014 (McAuley et al., SIGIR'15) and 2018 (Ni, Li & McAuley, EMNLP'19) formats.

Reviews, one JSON object per line (plain or .gz), keys ``reviewerID``, ``asin``, ``overall``, ``unixReviewTime``
in both releases. File names tried for a category ``C``, in order: 2018 ``C_5.json(.gz)`` (5-core), ``C.json(.gz)``
(full); 2014 ``reviews_C_5.json(.gz)``, ``reviews_C.json(.gz)``.
Metadata ``meta_C.json(.gz)``: 2018 rows are JSON with ``title``, ``category`` (list), ``description`` (list of
paragraphs), ``brand``; 2014 rows are Python literals with ``title``, ``categories`` (list of lists),
``description`` (str), ``brand``. Only rows of reviewed items are kept, so ``meta_Books`` (3 M rows) stays cheap.

Why our own line loop rather than ``pandas.read_json``: it gives the line number of a truncated or malformed
line, reads the Python-literal 2014 metadata, and keeps only the four review fields in memory.
"""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

from ..errors import DataError
from ._parse import iter_json_lines

REVIEW_PATTERNS = ("{c}_5.json.gz", "{c}_5.json", "{c}.json.gz", "{c}.json",
                   "reviews_{c}_5.json.gz", "reviews_{c}_5.json", "reviews_{c}.json.gz", "reviews_{c}.json")
META_PATTERNS = ("meta_{c}.json.gz", "meta_{c}.json")
# the noun a prompt uses for an item of the category ("Given the user's history of <domain>s ...")
DOMAINS = {"Books": "book", "Kindle_Store": "e-book", "Movies_and_TV": "movie", "CDs_and_Vinyl": "music album",
           "Digital_Music": "song", "Video_Games": "video game", "Gift_Cards": "gift card"}


def find_files(folder: Path, category: str) -> tuple[Path | None, Path | None]:
    review = next((folder / p.format(c=category) for p in REVIEW_PATTERNS if (folder / p.format(c=category)).is_file()),
                  None)
    meta = next((folder / p.format(c=category) for p in META_PATTERNS if (folder / p.format(c=category)).is_file()),
                None)
    return review, meta


def _text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        value = " ".join(_text(v) for v in value)
    return html.unescape(str(value)).strip()


def _categories(obj: dict) -> str:
    cats = obj.get("category")
    if cats is None:  # 2014: list of category paths
        cats = [c for path in obj.get("categories") or [] for c in (path if isinstance(path, list) else [path])]
    seen: list[str] = []
    for c in cats or []:
        c = _text(c)
        if c and c not in seen:
            seen.append(c)
    return "|".join(seen)


def read_reviews(path: Path) -> pd.DataFrame:
    users, items, ratings, times = [], [], [], []
    for i, obj in iter_json_lines(path, "review"):
        try:
            users.append(str(obj["reviewerID"]))
            items.append(str(obj["asin"]))
            ratings.append(float(obj["overall"]))
            times.append(int(obj["unixReviewTime"]))
        except KeyError as err:
            raise DataError(f"{path}:{i}: review has no {err.args[0]!r} field; expected reviewerID, asin, overall, "
                            "unixReviewTime") from None
        except (TypeError, ValueError):
            raise DataError(f"{path}:{i}: 'overall' or 'unixReviewTime' is not a number "
                            f"(got {obj.get('overall')!r}, {obj.get('unixReviewTime')!r})") from None
    return pd.DataFrame({"raw_user_id": users, "raw_item_id": items, "rating": ratings, "timestamp": times})


def read_meta(path: Path, wanted: set[str]) -> pd.DataFrame:
    rows = []
    for i, obj in iter_json_lines(path, "product"):
        asin = obj.get("asin")
        if asin is None:
            raise DataError(f"{path}:{i}: metadata row has no 'asin'")
        if asin not in wanted:
            continue
        title = _text(obj.get("title"))
        if "getTime" in title:  # unformatted rows holding page JavaScript (CoLLM's notebook drops them too)
            title = ""
        rows.append({"raw_item_id": str(asin), "title": title, "categories": _categories(obj),
                     "description": _text(obj.get("description")), "brand": _text(obj.get("brand")), "year": None})
    return pd.DataFrame(rows, columns=["raw_item_id", "title", "categories", "description", "brand", "year"])


def read_amazon(folder: Path, category: str) -> dict:
    review, meta = find_files(folder, category)
    if review is None:
        raise FileNotFoundError(category)
    inter = read_reviews(review)
    items = read_meta(meta, set(inter["raw_item_id"])) if meta is not None else pd.DataFrame(
        columns=["raw_item_id", "title", "categories", "description", "brand", "year"])
    files = [review] + ([meta] if meta is not None else [])
    return {"interactions": inter, "items": items, "users": None, "files": files,
            "item_order": None, "user_order": None}
