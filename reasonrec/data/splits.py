"""``make_splits``: apply a named protocol to tables and return :class:`Splits` (samples + statistics)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from .. import io as rio
from ..config import Section, validate
from ..errors import DataError
from .protocols import PROTOCOLS
from .schema import POINTWISE_COLUMNS, RANKING_COLUMNS
from .tables import Tables


@dataclass
class Splits:
    """Samples of one protocol on one dataset.

    Fields:
        train, valid, test: sample DataFrames (columns: :mod:`reasonrec.data.schema`); ``valid`` is empty for
            ``kar`` and ``starec`` (their papers have no validation split).
        protocol: ``collm``, ``kar``, ``starec`` or ``tallrec``.
        options: the resolved options (every dataset preset filled in).
        seed: the seed the samples were drawn with.
        dataset: the tables' name; ``pool``: the interactions the protocol kept; ``info``: protocol extras.
        cleaning: what reading the raw files changed (:attr:`Tables.cleaning`: repeated interactions dropped,
            titles replaced, ...), reported by ``stats()`` under ``cleaning``.
    """

    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame
    protocol: str
    options: Section
    seed: int = 0
    dataset: str = ""
    pool: pd.DataFrame | None = None
    info: dict[str, Any] = field(default_factory=dict)
    checksums: dict[str, str] = field(default_factory=dict)
    cleaning: dict[str, int] = field(default_factory=dict)
    saved_stats: dict[str, Any] | None = None  # stats recorded by ``save`` (a loaded Splits has no pool)

    @property
    def kind(self) -> str:
        return "ranking" if self.protocol == "starec" else "pointwise"

    def stats(self) -> dict[str, Any]:
        """Sample counts, the kept pool's users / items / interactions, positive rate, protocol extras and the
        readers' ``cleaning`` counts."""
        if self.pool is None and self.saved_stats is not None:
            return dict(self.saved_stats)
        out: dict[str, Any] = {"dataset": self.dataset, "protocol": self.protocol, "seed": self.seed,
                               "train": len(self.train), "valid": len(self.valid), "test": len(self.test)}
        pool = self.pool if self.pool is not None else pd.concat([self.train, self.valid, self.test])
        out["users"] = int(pool["user_id"].nunique())
        out["items"] = int(pool["item_id"].nunique())
        out["interactions"] = len(pool)
        if self.kind == "pointwise":
            samples = pd.concat([self.train, self.valid, self.test])
            out["positive_rate"] = round(float(samples["label"].mean()), 6) if len(samples) else None
            for name, df in (("train", self.train), ("valid", self.valid), ("test", self.test)):
                out[f"{name}_positive_rate"] = round(float(df["label"].mean()), 6) if len(df) else None
        else:
            out["positive_rate"] = round(float(pool["label"].mean()), 6) if len(pool) else None
        hist = pd.concat([self.train, self.valid, self.test])["hist_item_ids"]
        out["mean_history_len"] = round(float(hist.map(len).mean()), 4) if len(hist) else 0.0
        out.update(self.info)
        out["cleaning"] = dict(self.cleaning)
        return out

    def save(self, out_dir: str | Path) -> Path:
        """Write ``train/valid/test.parquet`` and ``splits.json`` (protocol, options, stats) atomically."""
        out_dir = Path(out_dir)
        with rio.atomic_dir(out_dir) as tmp:
            for name in ("train", "valid", "test"):
                getattr(self, name).to_parquet(tmp / f"{name}.parquet", index=False)
            rio.write_json(tmp / "splits.json", {"protocol": self.protocol, "seed": self.seed,
                                                 "dataset": self.dataset,
                                                 "options": self.options.model_dump(mode="json"),
                                                 "stats": self.stats(), "checksums": self.checksums})
        return out_dir

    @classmethod
    def load(cls, out_dir: str | Path) -> Splits:
        out_dir = Path(out_dir)
        meta_path = out_dir / "splits.json"
        if not meta_path.is_file():
            raise DataError(f"{out_dir}: no splits.json; run `reasonrec data prepare ... --out {out_dir}` first")
        meta = json.loads(meta_path.read_text())
        opts_cls = PROTOCOLS[meta["protocol"]][0]
        frames = {n: pd.read_parquet(out_dir / f"{n}.parquet") for n in ("train", "valid", "test")}
        return cls(protocol=meta["protocol"], options=opts_cls.model_validate(meta["options"]), seed=meta["seed"],
                   dataset=meta["dataset"], checksums=meta.get("checksums", {}), saved_stats=meta.get("stats"),
                   **frames)


def make_splits(tables: Tables, protocol: str, seed: int = 0, **options: Any) -> Splits:
    """Apply ``protocol`` (``collm``, ``kar``, ``starec``, ``tallrec``) to ``tables``.

    ``options`` are the protocol's typed options (see ``CollmOptions`` etc.); unknown keys are a ConfigError
    naming the closest valid key. The same (tables, protocol, seed, options) always gives identical samples.
    """
    if protocol not in PROTOCOLS:
        raise DataError(f"unknown protocol {protocol!r}; choose one of: {', '.join(PROTOCOLS)}")
    opts_cls, fn = PROTOCOLS[protocol]
    opts = validate(opts_cls, options, f"{protocol} options").defaults(tables)
    res = fn(tables, seed, opts)
    cols = RANKING_COLUMNS if protocol == "starec" else POINTWISE_COLUMNS
    extra = ("warm",) if protocol == "collm" else ()

    def tidy(df: pd.DataFrame) -> pd.DataFrame:
        keep = [c for c in (*cols, *extra) if c in df.columns]
        if protocol == "starec":
            keep += [c for c in ("rating", "label") if c in df.columns]
        df = df[keep].reset_index(drop=True)
        if "label" in df:
            df["label"] = df["label"].astype("int8")
        return df

    return Splits(train=tidy(res.train), valid=tidy(res.valid), test=tidy(res.test), protocol=protocol,
                  options=opts, seed=seed, dataset=tables.name, pool=res.pool, info=res.info,
                  checksums=dict(tables.checksums), cleaning=dict(tables.cleaning))
