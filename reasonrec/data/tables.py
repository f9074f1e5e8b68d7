"""``load_tables``: raw files → canonical tables, with a Parquet cache keyed by the raw files' content.

The cache lives in ``<reasonrec cache>/tables/<name>-<key>/`` (``$REASONREC_CACHE_DIR``), never beside the raw
files (data folders are often read-only). The key hashes the sha256 of every raw file (the checksums run
manifests record, ``Tables.checksums``), so any edit, even one that keeps the size and modification time, reads
the files again. Hashing costs about 2 ms per MB, far less than parsing.

What the readers cleaned (repeated interactions dropped, HTML extracted, titles replaced) is counted in
``Tables.cleaning``; problems that leave a usable table are :class:`~reasonrec.data.DataWarning` s, kept in
``Tables.warnings`` and raised again when the tables come from the cache.
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
from ._parse import DataWarning

CACHE_VERSION = 2  # 2: repeated interactions dropped, HTML extracted, content-hash keys
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
        cleaning: what the reader changed, counted: ``duplicates_dropped`` (repeated (user, item) events; the
            latest is kept), and for Amazon / Yelp ``html_values`` (metadata values that held HTML),
            ``titles_from_description`` / ``titles_from_id`` (titles that were no title, replaced by the
            description's first sentence or by ``item <id>``), ``items_without_metadata``,
            ``metadata_rows_repeated``.
        warnings: the :class:`~reasonrec.data.DataWarning` messages reading raised (e.g. no metadata file).
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
    cleaning: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def n_users(self) -> int:
        return int(self.users["user_id"].max()) if len(self.users) else 0

    @property
    def n_items(self) -> int:
        return int(self.items["item_id"].max()) if len(self.items) else 0

    def summary(self) -> dict[str, Any]:
        inter = self.interactions
        with_meta = int((self.items["title"] != "").sum()) - int(self.cleaning.get("items_without_metadata", 0))
        return {"name": self.name, "users": int(inter["user_id"].nunique()), "items": int(inter["item_id"].nunique()),
                "interactions": len(inter), "items_with_metadata": with_meta,
                "first": _iso(inter["timestamp"].min()), "last": _iso(inter["timestamp"].max()),
                "cleaning": dict(self.cleaning), **({"warnings": list(self.warnings)} if self.warnings else {})}


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


def _locate_movielens(root: Path, name: str, required: tuple[str, ...], label: str,
                      optional: tuple[str, ...] = ()) -> tuple[Path, list[Path]]:
    """The dataset folder and its files: ``required`` ones, then the ``optional`` ones present (the files that
    state the expected counts: a different one must invalidate the cache too)."""
    candidates = [root / name, root]
    for folder in candidates:
        present = [f for f in required if (folder / f).is_file()]
        if len(present) == len(required):
            return folder, [folder / f for f in (*required, *optional) if (folder / f).is_file()]
        if present and folder == root / name:
            absent = [f for f in required if f not in present]
            raise DataError(f"{folder}: {label} is incomplete: missing {', '.join(absent)} (have "
                            f"{', '.join(present)}). Copy the missing files there, or run `reasonrec data fetch "
                            f"{name} --dest DIR` on a machine with internet access")
    for zpath in (root / f"{name}.zip", root / name / f"{name}.zip"):
        if zpath.is_file():
            digest = _checksums([zpath], zpath.parent)[zpath.name]  # by content, like the table cache
            folder = sources.extract_zip(zpath, name, rio.cache_dir() / "extracted" / digest[:16])
            return folder, [folder / f for f in (*required, *optional) if (folder / f).is_file()]
    raise _missing(label, candidates, sources.SOURCES[name].what, name)


def _checksums(files: list[Path], folder: Path) -> dict[str, str]:
    """File name (relative to the dataset folder) → sha256 of its content."""
    out = {}
    for f in files:
        try:
            out[os.path.relpath(f, folder) if f.is_relative_to(folder) else str(f)] = rio.sha256_file(f)
        except OSError as err:
            raise DataError(f"{f}: cannot read ({err}); check the file's permissions") from None
    return out


def _key(name: str, checksums: dict[str, str]) -> str:
    # content, not size + mtime: an in-place edit that keeps both (or a coarse-mtime file system) must not
    # serve the tables of the old content
    parts = [CACHE_VERSION, name, sorted(checksums.items())]
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
                                          "MovieLens-100K", optional=("u.info",))
    elif dataset == "ml-1m":
        folder, files = _locate_movielens(root, "ml-1m", ("ratings.dat", "movies.dat", "users.dat"), "MovieLens-1M",
                                          optional=("README",))
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

    folder = folder if dataset.startswith("ml-") else files[0].parent
    checksums = _checksums(files, folder)
    key = _key(name, checksums)
    cdir = rio.cache_dir() / "tables" / f"{name}-{key[:16]}"
    if cache and (cdir / "meta.json").is_file():
        try:
            meta = json.loads((cdir / "meta.json").read_text())
            tables = Tables(name=name, dataset=dataset, category=category, domain=meta["domain"],
                            checksums=meta["checksums"], cleaning=meta["cleaning"], warnings=meta["warnings"],
                            interactions=pd.read_parquet(cdir / "interactions.parquet"),
                            items=pd.read_parquet(cdir / "items.parquet"),
                            users=pd.read_parquet(cdir / "users.parquet"))
        except (OSError, ValueError, KeyError):
            pass  # unreadable cache: rebuild it below
        else:
            for message in tables.warnings:  # the cache must not silence what the cold read said
                warnings.warn(message, DataWarning, stacklevel=2)
            return tables

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DataWarning)
        tables = _read(dataset, folder, category, files, name)
    for w in caught:
        if issubclass(w.category, DataWarning):
            tables.warnings.append(str(w.message))
            warnings.warn(str(w.message), DataWarning, stacklevel=2)
        else:  # not ours: hand it on unchanged
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    tables.checksums = checksums
    if cache:
        try:
            with rio.atomic_dir(cdir) as tmp:
                tables.interactions.to_parquet(tmp / "interactions.parquet", index=False)
                tables.items.to_parquet(tmp / "items.parquet", index=False)
                tables.users.to_parquet(tmp / "users.parquet", index=False)
                rio.write_json(tmp / "meta.json", {"name": name, "domain": tables.domain,
                                                   "checksums": tables.checksums, "cleaning": tables.cleaning,
                                                   "warnings": tables.warnings,
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
    cleaning = {"duplicates_dropped": 0, **raw.get("cleaning", {})}
    inter, items, users = canonicalize(raw["interactions"], raw["items"], raw["users"],
                                       item_order=raw["item_order"], user_order=raw["user_order"],
                                       source=str(files[0]), cleaning=cleaning)
    return Tables(name=name, dataset=dataset, category=category, interactions=inter, items=items, users=users,
                  domain=_domain(dataset, category), cleaning=cleaning)
