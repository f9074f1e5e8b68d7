"""``load_tables``: raw files → canonical tables, with a Parquet cache keyed by the raw files.

The cache lives in ``<reasonrec cache>/tables/<name>-<key>/`` (``$REASONREC_CACHE_DIR``), never beside the raw
files (data folders are often read-only). The key hashes each raw file's absolute path, size and modification
time, so replacing a file invalidates the cache; the sha256 of each raw file is computed once, on the cold read,
and stored with the tables (``Tables.checksums``, echoed into run manifests).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from .. import io as rio
from ..errors import DataError
from . import sources

CACHE_VERSION = 1
DATASETS = ("ml-100k", "ml-1m", "amazon", "yelp")


@dataclass
class Tables:
    """The canonical tables of one dataset (see :mod:`reasonrec.data.schema`).

    Fields:
        name: ``ml-100k``, ``ml-1m``, ``amazon-<Category>``, ``yelp`` or ``synthetic``.
        dataset: the dataset family (``ml-100k``, ``ml-1m``, ``amazon``, ``yelp``, ``synthetic``).
        category: Amazon category, else None.
        interactions, items, users: canonical DataFrames.
        checksums: raw file name → sha256.
        domain: the noun prompts use for an item ("movie", "book", "business", "product", ...).
        truth: known ground truth for synthetic worlds (:class:`~reasonrec.data.synthetic.SyntheticTruth`).
    """

    name: str
    interactions: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame
    checksums: dict[str, str] = field(default_factory=dict)
    domain: str = "item"
    dataset: str = ""
    category: str | None = None
    truth: Any = None

    @property
    def n_users(self) -> int:
        return int(self.users["user_id"].max()) if len(self.users) else 0

    @property
    def n_items(self) -> int:
        return int(self.items["item_id"].max()) if len(self.items) else 0

    def summary(self) -> dict[str, Any]:
        inter = self.interactions
        return {"name": self.name, "users": int(inter["user_id"].nunique()), "items": int(inter["item_id"].nunique()),
                "interactions": len(inter), "items_with_metadata": int((self.items["title"] != "").sum()),
                "first": _iso(inter["timestamp"].min()), "last": _iso(inter["timestamp"].max())}


def _iso(ts) -> str:
    return pd.Timestamp(int(ts), unit="s").isoformat()


# ---------------------------------------------------------------- locating raw files

def _missing(label: str, looked: list[Path], what: str, fetch_name: str | None) -> DataError:
    where = ", ".join(str(p) for p in looked)
    how = (f"with internet access run `reasonrec data fetch {fetch_name}`" if fetch_name else
           "download it from https://business.yelp.com/data/resources/open-dataset/ (its licence needs a manual "
           "download)")
    return DataError(
        f"{label} not found (looked in: {where}). Put the official files ({what}) in one of those folders, "
        f"or in <DIR>/{looked[0].name}/ and pass --data-dir DIR (or set {sources.DATA_ENV}=DIR); {how}")


def _locate_movielens(root: Path, name: str, required: tuple[str, ...], label: str) -> tuple[Path, list[Path]]:
    candidates = [root / name, root]
    for folder in candidates:
        present = [f for f in required if (folder / f).is_file()]
        if len(present) == len(required):
            return folder, [folder / f for f in required]
        if present and folder == root / name:
            absent = [f for f in required if f not in present]
            raise DataError(f"{folder}: {label} is incomplete: missing {', '.join(absent)} (have "
                            f"{', '.join(present)}). Copy the missing files there, or run `reasonrec data fetch "
                            f"{name} --dest DIR` on a machine with internet access")
    for zpath in (root / f"{name}.zip", root / name / f"{name}.zip"):
        if zpath.is_file():
            folder = sources.extract_zip(zpath, name, rio.cache_dir() / "extracted" / _key([zpath])[:12])
            return folder, [folder / f for f in required]
    raise _missing(label, candidates, sources.SOURCES[name].what, name)


def _key(files: list[Path]) -> str:
    parts = [CACHE_VERSION]
    for f in files:
        st = f.stat()
        parts.append([str(f.resolve()), st.st_size, st.st_mtime_ns])
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def _domain(dataset: str, category: str | None) -> str:
    from .amazon import DOMAINS

    if dataset.startswith("ml-"):
        return "movie"
    if dataset == "yelp":
        return "business"
    return DOMAINS.get(category or "", "product")


# ---------------------------------------------------------------- the public loader

def load_tables(dataset: str, data_dir: Path | str | None = None, category: str | None = None, *,
                cache: bool = True) -> Tables:
    """Read ``dataset`` (``ml-100k``, ``ml-1m``, ``amazon`` with ``category``, ``yelp``) from ``data_dir``.

    Returns the canonical :class:`Tables`; a second call with unchanged raw files reads the Parquet cache.
    ``cache=False`` neither reads nor writes it. Missing files, truncated or malformed lines → DataError.
    """
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset {dataset!r}; choose one of: {', '.join(DATASETS)}")
    if dataset == "amazon" and not category:
        raise DataError("dataset 'amazon' needs a category (e.g. --category Books or Gift_Cards)")
    root = sources.resolve_data_dir(data_dir)
    name = f"amazon-{category}" if dataset == "amazon" else dataset

    if dataset == "ml-100k":
        folder, files = _locate_movielens(root, "ml-100k", ("u.data", "u.item", "u.user", "u.genre"),
                                          "MovieLens-100K")
    elif dataset == "ml-1m":
        folder, files = _locate_movielens(root, "ml-1m", ("ratings.dat", "movies.dat", "users.dat"), "MovieLens-1M")
    elif dataset == "amazon":
        from .amazon import find_files

        candidates = [root / "amazon-2018", root / "amazon", root / "amazon-2014", root]
        files = []
        for folder in candidates:
            review, meta = find_files(folder, category)
            if review is not None:
                files = [review] + ([meta] if meta is not None else [])
                break
        if not files:
            raise _missing(f"Amazon category {category!r}", candidates,
                           f"{category}_5.json.gz or reviews_{category}_5.json.gz, plus meta_{category}.json.gz",
                           f"amazon --category {category}")
    else:
        from .yelp import find_files as find_yelp

        candidates = [root / "yelp", root]
        files = []
        for folder in candidates:
            business, review = find_yelp(folder)
            if business is not None and review is not None:
                files = [review, business]
                break
        if not files:
            raise _missing("Yelp Open Dataset", candidates,
                           "yelp_academic_dataset_business.json and yelp_academic_dataset_review.json", None)

    key = _key(files)
    cdir = rio.cache_dir() / "tables" / f"{name}-{key[:16]}"
    if cache and (cdir / "meta.json").is_file():
        try:
            meta = json.loads((cdir / "meta.json").read_text())
            return Tables(name=name, dataset=dataset, category=category, domain=meta["domain"],
                          checksums=meta["checksums"],
                          interactions=pd.read_parquet(cdir / "interactions.parquet"),
                          items=pd.read_parquet(cdir / "items.parquet"),
                          users=pd.read_parquet(cdir / "users.parquet"))
        except (OSError, ValueError, KeyError):
            pass  # unreadable cache: rebuild it below

    tables = _read(dataset, folder if dataset.startswith("ml-") else files[0].parent, category, files, name)
    if cache:
        try:
            with rio.atomic_dir(cdir) as tmp:
                tables.interactions.to_parquet(tmp / "interactions.parquet", index=False)
                tables.items.to_parquet(tmp / "items.parquet", index=False)
                tables.users.to_parquet(tmp / "users.parquet", index=False)
                rio.write_json(tmp / "meta.json", {"name": name, "domain": tables.domain,
                                                   "checksums": tables.checksums,
                                                   "files": [str(f) for f in files]})
        except OSError as err:  # a read-only cache must not stop the run
            warnings.warn(f"could not write the table cache {cdir}: {err}", stacklevel=2)
    return tables


def _read(dataset: str, folder: Path, category: str | None, files: list[Path], name: str) -> Tables:
    from .canonical import canonicalize

    if dataset == "ml-100k":
        from .movielens import read_ml100k as reader

        raw = reader(folder)
    elif dataset == "ml-1m":
        from .movielens import read_ml1m

        raw = read_ml1m(folder)
    elif dataset == "amazon":
        from .amazon import read_amazon

        raw = read_amazon(folder, category)
    else:
        from .yelp import read_yelp

        raw = read_yelp(folder)
    inter, items, users = canonicalize(raw["interactions"], raw["items"], raw["users"],
                                       item_order=raw["item_order"], user_order=raw["user_order"],
                                       source=str(files[0]))
    checksums = {os.path.relpath(f, folder) if f.is_relative_to(folder) else str(f): rio.sha256_file(f)
                 for f in files}
    return Tables(name=name, dataset=dataset, category=category, interactions=inter, items=items, users=users,
                  checksums=checksums, domain=_domain(dataset, category))
