"""Reader for the Yelp Open Dataset (https://business.yelp.com/data/resources/open-dataset/).

``yelp_academic_dataset_business.json``: one business per line (``business_id``, ``name``, ``categories`` as a
comma-separated string or null, ``city``, ``state``); ``yelp_academic_dataset_review.json``: one review per line
(``user_id``, ``business_id``, ``stars``, ``date`` as ``YYYY-MM-DD HH:MM:SS``, read as UTC). Items are
businesses: title = name, categories = Yelp categories, description = "city, state".
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..errors import DataError
from ._parse import (
    TextCleaner,
    check_timestamp,
    is_title,
    iter_json_lines,
    json_id,
    json_rating,
    json_value,
    placeholder_title,
)
from .amazon import ITEM_COLUMNS

BUSINESS_FILES = ("yelp_academic_dataset_business.json", "yelp_academic_dataset_business.json.gz", "business.json")
REVIEW_FILES = ("yelp_academic_dataset_review.json", "yelp_academic_dataset_review.json.gz", "review.json")


def find_files(folder: Path) -> tuple[Path | None, Path | None]:
    business = next((folder / n for n in BUSINESS_FILES if (folder / n).is_file()), None)
    review = next((folder / n for n in REVIEW_FILES if (folder / n).is_file()), None)
    return business, review


def read_yelp(folder: Path) -> dict:
    business, review = find_files(folder)
    if business is None or review is None:
        raise FileNotFoundError("yelp")
    users, items, ratings, dates, lines = [], [], [], [], []
    for i, obj in iter_json_lines(review, "review"):
        where = f"{review}:{i}"
        try:
            user, item, stars, date = obj["user_id"], obj["business_id"], obj["stars"], obj["date"]
        except KeyError as err:
            raise DataError(f"{where}: review has no {err.args[0]!r} field; expected user_id, business_id, "
                            "stars, date") from None
        users.append(json_id(user, "user_id", where))
        items.append(json_id(item, "business_id", where))
        ratings.append(json_rating(stars, "stars", where))
        dates.append(date)
        lines.append(i)
    ts = pd.to_datetime(pd.Series([d if isinstance(d, str) else "" for d in dates], dtype=object), format="%Y-%m-%d %H:%M:%S", errors="coerce", utc=True)
    if ts.isna().any():
        row = int(ts.isna().to_numpy().nonzero()[0][0])
        raise DataError(f"{review}:{lines[row]}: 'date' is not 'YYYY-MM-DD HH:MM:SS' (got "
                        f"{json_value(dates[row])})")
    seconds = ((ts - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).to_numpy("int64")
    # (pandas 3 stores datetimes in microseconds, so a raw int64 view would not be seconds)
    for row in (int(seconds.argmin()), int(seconds.argmax())) if len(seconds) else ():
        check_timestamp(int(seconds[row]), f"{review}:{lines[row]}: 'date'")
    inter = pd.DataFrame({"raw_user_id": users, "raw_item_id": items, "rating": ratings, "timestamp": seconds})
    wanted = set(items)
    rows: dict[str, dict] = {}
    clean = TextCleaner()
    for i, obj in iter_json_lines(business, "business"):
        where = f"{business}:{i}"
        if obj.get("business_id") is None:
            raise DataError(f"{where}: business has no 'business_id'")
        bid = json_id(obj["business_id"], "business_id", where)
        if bid not in wanted:
            continue
        cats = obj.get("categories") or ""
        if not isinstance(cats, str | list):
            raise DataError(f"{where}: 'categories' is {json_value(cats)}; expected a comma-separated string")
        cats = [clean.text(c, "categories", where) for c in (cats.split(",") if isinstance(cats, str) else cats)]
        place = ", ".join(x for x in (clean.text(obj.get(k), k, where) for k in ("city", "state")) if x)
        rows[bid] = {"raw_item_id": bid, "title": clean.text(obj.get("name"), "name", where),
                     "categories": "|".join(c for c in cats if c), "description": place, "brand": "", "year": None}
    missing = sorted(wanted - set(rows))
    for bid in missing:
        rows[bid] = {"raw_item_id": bid, "title": "", "categories": "", "description": "", "brand": "",
                     "year": None}
    from_id = 0
    for row in rows.values():
        if not is_title(row["title"]):
            row["title"] = placeholder_title(row["raw_item_id"])
            from_id += 1
    items_df = pd.DataFrame(list(rows.values()), columns=ITEM_COLUMNS)
    cleaning = {"html_values": clean.html_values, "titles_from_description": 0, "titles_from_id": from_id,
                "items_without_metadata": len(missing)}
    return {"interactions": inter, "items": items_df, "users": None, "files": [review, business],
            "item_order": None, "user_order": None, "cleaning": cleaning}

