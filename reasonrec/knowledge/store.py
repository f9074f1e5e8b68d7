"""The knowledge store: (entity kind, entity id, text, vector) rows in one Parquet file.

Rows are keyed by (encoder, sha256 of the text), so a text is encoded once per encoder whatever entity it
belongs to and however often :meth:`KnowledgeStore.add` is called again (a re-run after an interruption encodes
only what is missing). Encoding runs in batches with a progress bar and the file is rewritten atomically after
every ``flush_every`` new vectors.

Per-entity matrices for the CTR models (:meth:`KnowledgeStore.matrix`): several texts of one entity are averaged
(``agg="mean"``) or kept separately (``agg="separate"``: (n + 1, k, d), one slot per text in insertion order,
zero-padded), row 0 being the padding id.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from .. import io
from ..errors import DataError
from .encoders import TextEncoder

COLUMNS = ["kind", "entity_id", "text", "text_sha", "encoder", "vector"]


def text_sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class KnowledgeStore:
    """A Parquet-backed store of knowledge texts and their vectors."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.exists():
            try:
                self.df = pd.read_parquet(self.path)
            except Exception as err:
                raise DataError(f"{self.path}: not a readable knowledge store ({err}); delete it to rebuild") from None
            if list(self.df.columns) != COLUMNS:
                raise DataError(f"{self.path}: columns {list(self.df.columns)}, expected {COLUMNS}")
        else:
            self.df = pd.DataFrame({c: pd.Series(dtype=object) for c in COLUMNS})

    def __len__(self) -> int:
        return len(self.df)

    def add(self, kind: str, entity_ids, texts, encoder: TextEncoder, batch_size: int = 64,
            progress: bool = True, flush_every: int = 4096) -> int:
        """Add (kind, id, text) rows; encode the texts not yet stored for this encoder. Returns #new encodings."""
        ids = [int(i) for i in entity_ids]
        texts = [str(t) for t in texts]
        if len(ids) != len(texts):
            raise DataError(f"knowledge store: {len(ids)} entity ids but {len(texts)} texts")
        shas = [text_sha(t) for t in texts]
        mine = self.df[self.df["encoder"] == encoder.name]
        known = dict(zip(mine["text_sha"], mine["vector"], strict=True))
        have_rows = set(zip(self.df["kind"], self.df["entity_id"], self.df["text_sha"], self.df["encoder"],
                            strict=True))
        todo = list(dict.fromkeys(s for s in shas if s not in known))
        by_sha = dict(zip(shas, texts, strict=True))
        bar = tqdm(total=len(todo), disable=not progress, desc=f"encode {kind} ({encoder.name})")
        for start in range(0, len(todo), flush_every):
            chunk = todo[start : start + flush_every]
            vecs = []
            for b in range(0, len(chunk), batch_size):
                part = chunk[b : b + batch_size]
                vecs.append(encoder.encode([by_sha[s] for s in part], batch_size=batch_size))
                bar.update(len(part))
            v = np.concatenate(vecs)
            known.update({s: v[j].astype(np.float32) for j, s in enumerate(chunk)})
            self._append(kind, ids, texts, shas, encoder.name, known, have_rows)
            self.save()
        bar.close()
        self._append(kind, ids, texts, shas, encoder.name, known, have_rows)
        self.save()
        return len(todo)

    def _append(self, kind, ids, texts, shas, enc, known, have_rows) -> None:
        rows = []
        for i, t, s in zip(ids, texts, shas, strict=True):
            key = (kind, i, s, enc)
            if s in known and key not in have_rows:
                have_rows.add(key)
                rows.append({"kind": kind, "entity_id": i, "text": t, "text_sha": s, "encoder": enc,
                             "vector": np.asarray(known[s], dtype=np.float32)})
        if rows:
            new = pd.DataFrame(rows, columns=COLUMNS)
            self.df = new if self.df.empty else pd.concat([self.df, new], ignore_index=True)

    def save(self) -> None:
        io.write_parquet(self.path, self.df)

    def matrix(self, kind: str, encoder: str, n_entities: int,
               agg: Literal["mean", "separate"] = "mean") -> np.ndarray:
        """(n_entities + 1, d) (``mean``) or (n_entities + 1, k, d) (``separate``); missing entities are zeros."""
        rows = self.df[(self.df["kind"] == kind) & (self.df["encoder"] == encoder)]
        if rows.empty:
            raise DataError(f"{self.path}: no vectors of kind '{kind}' for encoder '{encoder}'; run add() first")
        vecs = np.stack(rows["vector"].to_numpy()).astype(np.float32)
        ent = rows["entity_id"].to_numpy(np.int64)
        if ent.max() > n_entities or ent.min() < 0:
            raise DataError(f"{self.path}: kind '{kind}' has entity ids up to {ent.max()}, beyond n_entities="
                            f"{n_entities}")
        d = vecs.shape[1]
        if agg == "mean":
            out = np.zeros((n_entities + 1, d), np.float32)
            np.add.at(out, ent, vecs)
            cnt = np.bincount(ent, minlength=n_entities + 1).astype(np.float32)
            return out / np.maximum(cnt, 1)[:, None]
        slot = pd.Series(ent).groupby(ent).cumcount().to_numpy()
        out = np.zeros((n_entities + 1, int(slot.max()) + 1, d), np.float32)
        out[ent, slot] = vecs
        return out


def item_text(items: pd.DataFrame) -> pd.Series:
    """The item-side factual text used by the knowledge-field check: title and genres/categories."""
    cats = items["categories"].fillna("").str.replace("|", ", ", regex=False)
    return "Title: " + items["title"].fillna("").astype(str) + ". Genres: " + cats + "."
