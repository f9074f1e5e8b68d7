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
from ._parse import EARLIEST_TIMESTAMP, check_ascii, check_fields, fail, latest_timestamp, read_bytes, warn

# ML-1M README, "Occupation is chosen from the following choices"
ML1M_OCCUPATIONS = {
    0: "other", 1: "academic/educator", 2: "artist", 3: "clerical/admin", 4: "college/grad student",
    5: "customer service", 6: "doctor/health care", 7: "executive/managerial", 8: "farmer", 9: "homemaker",
    10: "K-12 student", 11: "lawyer", 12: "programmer", 13: "retired", 14: "sales/marketing", 15: "scientist",
    16: "self-employed", 17: "technician/engineer", 18: "tradesman/craftsman", 19: "unemployed", 20: "writer",
}
_YEAR = re.compile(r"\((\d{4})\)\s*$")
_INT = re.compile(r"[0-9]{1,9}")  # not str.isdigit: it accepts "²", which int() refuses


def _is_int(text: str) -> bool:
    return _INT.fullmatch(text) is not None


def read_ratings(path: Path, sep: bytes) -> pd.DataFrame:
    """Parse a ratings file of 4 integer fields per line; any bad line → DataError naming file and line.

    Beyond the shape, every value must be plausible: ids ≥ 1, a whole-star rating 1-5 and a timestamp between
    1995 and today (a timestamp cut short, ``88125``, would otherwise become a 1970 event).
    """
    expected = "4 integer fields (user, item, rating 1-5, unix timestamp) per line"
    data = read_bytes(path)
    if not data.strip():
        raise DataError(f"{path}: the file is empty; expected {expected}")
    check_ascii(path, data, expected)
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
    if not all(pd.api.types.is_signed_integer_dtype(df[c]) for c in names):
        # slow path, only for a bad file: re-read as text to say which line and field is wrong
        df = pd.read_csv(io.BytesIO(data), sep="\t", header=None, names=names, skip_blank_lines=False,
                         engine="c", dtype=str, keep_default_na=False)
    limits = {"raw_user_id": (1, 2**31 - 1, "user id"), "raw_item_id": (1, 2**31 - 1, "item id"),
              "rating": (1, 5, "rating"), "timestamp": (EARLIEST_TIMESTAMP, latest_timestamp(), "timestamp")}
    values, first_bad = {}, None  # report the first bad line of the file, whichever column it is in
    for col in names:
        if pd.api.types.is_signed_integer_dtype(df[col]):
            num = df[col].to_numpy(np.float64)
        else:
            text = df[col].fillna("").astype(str)
            num = pd.to_numeric(text.where(text.str.fullmatch(r"\s*[+-]?\d{1,18}\s*"), None), errors="coerce")
            num = num.to_numpy(dtype=np.float64, na_value=np.nan)
        lo, hi, label = limits[col]
        with np.errstate(invalid="ignore"):
            bad = np.isnan(num) | (num < lo) | (num > hi)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            if first_bad is None or row < first_bad[0]:
                first_bad = (row, col, num[row], label, lo, hi)
        values[col] = num
    if first_bad is not None:
        row, col, value, label, lo, hi = first_bad
        cells = df.iloc[row]
        if cells.isna().any() or (cells.astype(str).str.strip() == "").any():  # a dropped field shifts the rest
            problem = "missing field"
        elif np.isnan(value):
            problem = f"non-integer {label}"
        elif col == "timestamp":
            problem = f"timestamp {int(value)} outside 1995-01-01 .. today (a value cut short or corrupted)"
        else:
            problem = f"{label} out of range ({lo}..{hi})"
        raise fail(path, row + 1, problem, expected)
    out = pd.DataFrame({c: values[c].astype(np.int64) for c in names})
    out["raw_user_id"] = out["raw_user_id"].astype(str)
    out["raw_item_id"] = out["raw_item_id"].astype(str)
    return out


def _lines(path: Path, sep: str, n_fields: int, expected: str) -> list[tuple[int, list[str]]]:
    # split on "\n" only (str.splitlines would also split on latin-1 0x85 and other separators, and then the
    # line numbers of our errors would disagree with every editor)
    text = read_bytes(path).decode("latin-1")
    rows = []
    for i, line in enumerate(text.split("\n"), 1):
        line = line.rstrip("\r")
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


def _unique_ids(path: Path, rows: list[tuple[int, str]], what: str) -> None:
    seen: dict[str, int] = {}
    for i, raw in rows:
        if raw in seen:
            raise fail(path, i, f"{what} {raw} repeats line {seen[raw]}", f"one line per {what}")
        seen[raw] = i


def _known_ids(path: Path, inter: pd.DataFrame, col: str, known: set[str], listing: Path, what: str) -> None:
    """Every rating names a user / movie of the listing file: an unknown id is a corrupt line."""
    unknown = ~inter[col].isin(known).to_numpy()
    if unknown.any():
        row = int(np.flatnonzero(unknown)[0])
        raise fail(path, row + 1, f"{what} {inter[col].iloc[row]} is not in {listing.name}",
                   f"ids listed in {listing}")


def _check_count(path: Path, got: int, stated: int, what: str, source: Path) -> None:
    if got != stated:
        raise DataError(f"{path}: {got:,} {what}, but {source} states {stated:,}; the file looks truncated or "
                        f"edited — download it again (or remove {source.name} if you changed the data on purpose)")


def _ml100k_info(folder: Path) -> dict[str, int] | None:
    """The counts ``u.info`` states ("943 users / 1682 items / 100000 ratings"), or None without the file."""
    path = folder / "u.info"
    if not path.is_file():
        warn(f"{path} not found: the MovieLens-100K counts it states are not checked, so a truncated u.data, "
             "u.item or u.user would go unnoticed; copy u.info from the official zip")
        return None
    counts = {}
    for i, line in enumerate(read_bytes(path).decode("latin-1").split("\n"), 1):
        line = line.strip()
        if not line:
            continue
        m = re.fullmatch(r"(\d+) (users|items|ratings)", line)
        if not m:
            raise fail(path, i, "not a count", "'<n> users', '<n> items' and '<n> ratings', one per line")
        counts[m.group(2)] = int(m.group(1))
    if set(counts) != {"users", "items", "ratings"}:
        raise DataError(f"{path}: states {sorted(counts) or 'nothing'}; expected the counts of users, items and "
                        "ratings — copy u.info from the official zip")
    return counts


def read_ml100k(folder: Path) -> dict:
    inter = read_ratings(folder / "u.data", b"\t")
    genre_rows = _lines(folder / "u.genre", "|", 2, "name|index")
    genres = [parts[0] for _, parts in genre_rows]
    if len(genres) != 19:
        raise DataError(f"{folder / 'u.genre'}: expected 19 genres, found {len(genres)}")
    for k, (i, parts) in enumerate(genre_rows):
        if not parts[0].strip():
            raise fail(folder / "u.genre", i, "empty genre name", "name|index")
        if parts[1] != str(k):
            raise fail(folder / "u.genre", i, f"genre index {parts[1]!r} out of order", f"index {k} on line {i}")
    items = []
    item_file = folder / "u.item"
    rows = _lines(item_file, "|", 24, "24 '|'-separated fields (id|title|date|...|19 genre flags)")
    for i, p in rows:
        if not _is_int(p[0]):
            raise fail(item_file, i, "non-integer movie id", "an integer movie id in field 1")
        flags = p[5:]
        if any(f not in ("0", "1") for f in flags):
            raise fail(item_file, i, "genre flag other than 0/1", "19 genre flags, each 0 or 1")
        items.append({"raw_item_id": str(int(p[0])), "title": p[1],
                      "categories": "|".join(g for g, f in zip(genres, flags, strict=True) if f == "1"),
                      "description": "", "brand": "", "year": _year(p[1], p[2])})
    _unique_ids(item_file, [(i, str(int(p[0]))) for i, p in rows], "movie id")
    users = []
    user_file = folder / "u.user"
    rows = _lines(user_file, "|", 5, "5 '|'-separated fields (id|age|gender|occupation|zip)")
    for i, p in rows:
        if not (_is_int(p[0]) and _is_int(p[1])):
            raise fail(user_file, i, "non-integer id or age", "id|age|gender|occupation|zip")
        users.append({"raw_user_id": str(int(p[0])), "age": int(p[1]), "gender": p[2], "occupation": p[3],
                      "zip": p[4]})
    _unique_ids(user_file, [(i, str(int(p[0]))) for i, p in rows], "user id")
    info = _ml100k_info(folder)
    if info is not None:  # a file truncated at a line break parses cleanly: only the stated counts tell
        _check_count(folder / "u.data", len(inter), info["ratings"], "ratings", folder / "u.info")
        _check_count(item_file, len(items), info["items"], "items", folder / "u.info")
        _check_count(user_file, len(users), info["users"], "users", folder / "u.info")
    items_df, users_df = pd.DataFrame(items), pd.DataFrame(users)
    _known_ids(folder / "u.data", inter, "raw_user_id", set(users_df["raw_user_id"]), user_file, "user")
    _known_ids(folder / "u.data", inter, "raw_item_id", set(items_df["raw_item_id"]), item_file, "movie")
    return {"interactions": inter, "items": items_df, "users": users_df,
            "item_order": _numeric_ids(items_df["raw_item_id"]), "user_order": _numeric_ids(users_df["raw_user_id"])}


def _ml1m_counts(folder: Path) -> dict[str, int] | None:
    """The counts the ML-1M README states ("1,000,209 anonymous ratings ... made by 6,040 MovieLens users")."""
    path = folder / "README"
    if not path.is_file():
        return None
    text = " ".join(read_bytes(path).decode("latin-1").split())
    ratings = re.search(r"([\d,]+) anonymous ratings", text)
    users = re.search(r"made by ([\d,]+) MovieLens users", text)
    if not (ratings and users):
        return None
    return {"ratings": int(ratings.group(1).replace(",", "")), "users": int(users.group(1).replace(",", ""))}


def read_ml1m(folder: Path) -> dict:
    inter = read_ratings(folder / "ratings.dat", b"::")
    items = []
    movie_file, user_file = folder / "movies.dat", folder / "users.dat"
    rows = _lines(movie_file, "::", 3, "MovieID::Title::Genres")
    for i, p in rows:
        if not _is_int(p[0]):
            raise fail(movie_file, i, "non-integer movie id", "MovieID::Title::Genres")
        items.append({"raw_item_id": str(int(p[0])), "title": p[1], "categories": p[2], "description": "",
                      "brand": "", "year": _year(p[1])})
    _unique_ids(movie_file, [(i, str(int(p[0]))) for i, p in rows], "movie id")
    users = []
    rows = _lines(user_file, "::", 5, "UserID::Gender::Age::Occupation::Zip-code")
    for i, p in rows:
        if not (_is_int(p[0]) and _is_int(p[2]) and _is_int(p[3])):
            raise fail(user_file, i, "non-integer id, age or occupation",
                       "UserID::Gender::Age::Occupation::Zip-code")
        users.append({"raw_user_id": str(int(p[0])), "gender": p[1], "age": int(p[2]),
                      "occupation": ML1M_OCCUPATIONS.get(int(p[3]), p[3]), "zip": p[4]})
    _unique_ids(user_file, [(i, str(int(p[0]))) for i, p in rows], "user id")
    counts = _ml1m_counts(folder)
    if counts is not None:  # ratings.dat cut at a line break parses cleanly: only the README's counts tell
        _check_count(folder / "ratings.dat", len(inter), counts["ratings"], "ratings", folder / "README")
        _check_count(user_file, len(users), counts["users"], "users", folder / "README")
    items_df, users_df = pd.DataFrame(items), pd.DataFrame(users)
    _known_ids(folder / "ratings.dat", inter, "raw_user_id", set(users_df["raw_user_id"]), user_file, "user")
    _known_ids(folder / "ratings.dat", inter, "raw_item_id", set(items_df["raw_item_id"]), movie_file, "movie")
    return {"interactions": inter, "items": items_df, "users": users_df,
            "item_order": _numeric_ids(items_df["raw_item_id"]), "user_order": _numeric_ids(users_df["raw_user_id"])}
