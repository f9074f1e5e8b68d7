"""Readers for the official MovieLens-100K and MovieLens-1M files (GroupLens).

ML-100K: ``u.data`` (user \\t item \\t rating \\t timestamp), ``u.item`` (``|``-separated, latin-1, 19 genre
flags named by ``u.genre``), ``u.user`` (id|age|gender|occupation|zip).
ML-1M: ``ratings.dat`` (``UserID::MovieID::Rating::Timestamp``), ``movies.dat`` (``MovieID::Title::Genres``,
latin-1), ``users.dat`` (``UserID::Gender::Age::Occupation::Zip-code``; age and occupation are codes, the
occupation names come from the dataset's README).
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import DataError
from ._parse import check_fields, fail, read_bytes

# ML-1M README, "Occupation is chosen from the following choices"
ML1M_OCCUPATIONS = {
    0: "other", 1: "academic/educator", 2: "artist", 3: "clerical/admin", 4: "college/grad student",
    5: "customer service", 6: "doctor/health care", 7: "executive/managerial", 8: "farmer", 9: "homemaker",
    10: "K-12 student", 11: "lawyer", 12: "programmer", 13: "retired", 14: "sales/marketing", 15: "scientist",
    16: "self-employed", 17: "technician/engineer", 18: "tradesman/craftsman", 19: "unemployed", 20: "writer",
}
_YEAR = re.compile(r"\((\d{4})\)\s*$")


def read_ratings(path: Path, sep: bytes) -> pd.DataFrame:
    """Parse a ratings file of 4 integer fields per line; any bad line → DataError naming file and line."""
    expected = "4 integer fields (user, item, rating 1-5, unix timestamp) per line"
    data = read_bytes(path)
    if sep != b"\t":
        data = data.replace(sep, b"\t")  # pandas' C engine only splits on one character
    names = ["raw_user_id", "raw_item_id", "rating", "timestamp"]
    try:
        df = pd.read_csv(io.BytesIO(data), sep="\t", header=None, names=names, skip_blank_lines=False,
                         engine="c")
    except pd.errors.ParserError:
        check_fields(path, data, b"\t", 4, expected, "latin-1")
        raise DataError(f"{path}: cannot be parsed; expected {expected}") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty; expected {expected}") from None
    for col in names:
        if not pd.api.types.is_integer_dtype(df[col]):
            bad = pd.to_numeric(df[col], errors="coerce")
            bad = bad.isna() | (bad != np.floor(bad))
            row = int(np.flatnonzero(bad.to_numpy())[0])
            problem = "missing field" if pd.isna(df[col].iloc[row]) else f"non-integer {col}"
            raise fail(path, row + 1, problem, expected)
    out_of_range = ~df["rating"].between(1, 5)
    if out_of_range.any():
        raise fail(path, int(np.flatnonzero(out_of_range.to_numpy())[0]) + 1, "rating out of range", expected)
    df["raw_user_id"] = df["raw_user_id"].astype(str)
    df["raw_item_id"] = df["raw_item_id"].astype(str)
    return df


def _lines(path: Path, sep: str, n_fields: int, expected: str) -> list[tuple[int, list[str]]]:
    text = read_bytes(path).decode("latin-1")
    rows = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line:
            continue
        parts = line.split(sep)
        if len(parts) != n_fields:
            raise fail(path, i, f"{len(parts)} fields instead of {n_fields}", expected)
        rows.append((i, parts))
    return rows


def _year(title: str, date: str = "") -> int | None:
    m = _YEAR.search(title)
    if m:
        return int(m.group(1))
    m = re.search(r"(\d{4})$", date)
    return int(m.group(1)) if m else None


def _numeric_ids(ids) -> list[str]:
    return [str(x) for x in sorted({int(x) for x in ids})]


def read_ml100k(folder: Path) -> dict:
    inter = read_ratings(folder / "u.data", b"\t")
    genres = [parts[0] for _, parts in _lines(folder / "u.genre", "|", 2, "name|index")]
    if len(genres) != 19:
        raise DataError(f"{folder / 'u.genre'}: expected 19 genres, found {len(genres)}")
    items = []
    for i, p in _lines(folder / "u.item", "|", 24, "24 '|'-separated fields (id|title|date|...|19 genre flags)"):
        if not p[0].isdigit():
            raise fail(folder / "u.item", i, "non-integer movie id", "an integer movie id in field 1")
        flags = p[5:]
        items.append({"raw_item_id": p[0], "title": p[1],
                      "categories": "|".join(g for g, f in zip(genres, flags, strict=True) if f == "1"),
                      "description": "", "brand": "", "year": _year(p[1], p[2])})
    users = []
    for i, p in _lines(folder / "u.user", "|", 5, "5 '|'-separated fields (id|age|gender|occupation|zip)"):
        if not (p[0].isdigit() and p[1].isdigit()):
            raise fail(folder / "u.user", i, "non-integer id or age", "id|age|gender|occupation|zip")
        users.append({"raw_user_id": p[0], "age": int(p[1]), "gender": p[2], "occupation": p[3], "zip": p[4]})
    items_df, users_df = pd.DataFrame(items), pd.DataFrame(users)
    return {"interactions": inter, "items": items_df, "users": users_df,
            "item_order": _numeric_ids(items_df["raw_item_id"]), "user_order": _numeric_ids(users_df["raw_user_id"])}


def read_ml1m(folder: Path) -> dict:
    inter = read_ratings(folder / "ratings.dat", b"::")
    items = []
    for i, p in _lines(folder / "movies.dat", "::", 3, "MovieID::Title::Genres"):
        if not p[0].isdigit():
            raise fail(folder / "movies.dat", i, "non-integer movie id", "MovieID::Title::Genres")
        items.append({"raw_item_id": p[0], "title": p[1], "categories": p[2], "description": "", "brand": "",
                      "year": _year(p[1])})
    users = []
    for i, p in _lines(folder / "users.dat", "::", 5, "UserID::Gender::Age::Occupation::Zip-code"):
        if not (p[0].isdigit() and p[2].isdigit() and p[3].isdigit()):
            raise fail(folder / "users.dat", i, "non-integer id, age or occupation",
                       "UserID::Gender::Age::Occupation::Zip-code")
        users.append({"raw_user_id": p[0], "gender": p[1], "age": int(p[2]),
                      "occupation": ML1M_OCCUPATIONS.get(int(p[3]), p[3]), "zip": p[4]})
    items_df, users_df = pd.DataFrame(items), pd.DataFrame(users)
    return {"interactions": inter, "items": items_df, "users": users_df,
            "item_order": _numeric_ids(items_df["raw_item_id"]), "user_order": _numeric_ids(users_df["raw_user_id"])}
