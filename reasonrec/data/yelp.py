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
from ._parse import iter_json_lines

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
        try:
            users.append(str(obj["user_id"]))
            items.append(str(obj["business_id"]))
            ratings.append(float(obj["stars"]))
            dates.append(str(obj["date"]))
            lines.append(i)
        except KeyError as err:
            raise DataError(f"{review}:{i}: review has no {err.args[0]!r} field; expected user_id, business_id, "
                            "stars, date") from None
        except (TypeError, ValueError):
            raise DataError(f"{review}:{i}: 'stars' is not a number (got {obj.get('stars')!r})") from None
    ts = pd.to_datetime(pd.Series(dates), format="%Y-%m-%d %H:%M:%S", errors="coerce", utc=True)
    if ts.isna().any():
        row = int(ts.isna().to_numpy().nonzero()[0][0])
        raise DataError(f"{review}:{lines[row]}: 'date' is not 'YYYY-MM-DD HH:MM:SS' (got {dates[row]!r})")
    inter = pd.DataFrame({"raw_user_id": users, "raw_item_id": items, "rating": ratings,
                          "timestamp": ((ts - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).to_numpy("int64")})
    # (pandas 3 stores datetimes in microseconds, so a raw int64 view would not be seconds)
    wanted = set(items)
    rows = []
    for i, obj in iter_json_lines(business, "business"):
        bid = obj.get("business_id")
        if bid is None:
            raise DataError(f"{business}:{i}: business has no 'business_id'")
        if bid not in wanted:
            continue
        cats = [c.strip() for c in (obj.get("categories") or "").split(",") if c.strip()]
        place = ", ".join(x for x in (obj.get("city"), obj.get("state")) if x)
        rows.append({"raw_item_id": bid, "title": str(obj.get("name") or ""), "categories": "|".join(cats),
                     "description": place, "brand": "", "year": None})
    items_df = pd.DataFrame(rows, columns=["raw_item_id", "title", "categories", "description", "brand", "year"])
    return {"interactions": inter, "items": items_df, "users": None, "files": [review, business],
            "item_order": None, "user_order": None}
