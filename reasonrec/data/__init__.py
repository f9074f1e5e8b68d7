"""The data layer: raw files → canonical tables → protocol samples.

Public API::

    tables = load_tables("ml-100k", data_dir)              # Tables: interactions, items, users, checksums, domain
    splits = make_splits(tables, "collm", seed=0)          # Splits: train / valid / test samples, stats()
    world = synthetic_world(200, 300, seed=0)              # Tables with known truth, for unit tests
    fetch("ml-1m", dest)                                   # official download, checksums verified

See :mod:`reasonrec.data.schema` for the columns and :mod:`reasonrec.data.protocols` for each protocol. A bad raw
file is one ``DataError`` naming file and line; what the readers cleaned is counted in ``Tables.cleaning`` (and
``Splits.stats()["cleaning"]``); problems that leave a usable table are a ``DataWarning``.
"""

from __future__ import annotations

from ._parse import DataWarning
from .protocols import CollmOptions, KarOptions, StarecOptions, TallrecOptions
from .sources import fetch, resolve_data_dir
from .splits import Splits, make_splits
from .synthetic import SyntheticTruth, synthetic_world
from .tables import DATASETS, Tables, load_tables

PROTOCOL_NAMES = ("collm", "kar", "starec", "tallrec")

__all__ = [
    "DATASETS", "PROTOCOL_NAMES", "CollmOptions", "DataWarning", "KarOptions", "Splits", "StarecOptions", "SyntheticTruth",
    "TallrecOptions", "Tables", "fetch", "load_tables", "make_splits", "resolve_data_dir", "synthetic_world",
]
