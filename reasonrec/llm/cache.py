"""Persistent generation cache (SQLite) wrapped around any backend.

A rerun or a resumed run never asks the model twice for the same thing. Each answer is stored under
``sha256(kind, model_id, adapter_id, formatted prompt, parameters, sample index)``; ``model_id`` names the
weights (and the dtype), ``adapter_id`` carries a hash of the adapter weights, and the formatted prompt is the
exact text after the chat template. Work is sent to the backend in chunks of the rows it works on at once
(:func:`rows_in_flight`: its batch, its parallel sequences, its concurrent requests; one row for a backend
that declares none, since it answers one at a time), and each chunk is committed in one transaction as soon
as it returns. A backend that finishes rows of one call at different times can declare ``row_callback`` in
``supports``: ``generate`` is then given ``on_row(j, generation)``, and each row is committed the moment it is
done. Either way a ``kill -9`` loses at most the rows in flight. WAL mode lets another process read the cache
while a run writes it.

Under ``engine: ray`` (:mod:`reasonrec.llm.ray_engine`) the chunks are shards mapped over Ray workers at once;
each finished shard is written as Parquet (:class:`ShardStore`, ``llm_shards/`` beside the cache file) and then
committed here, under the same keys: both engines read and fill the same cache.

Why our own (rather than e.g. ``diskcache`` or an HTTP-level cache): keys must be computed from the formatted
prompt and the sample index, and commits must follow our batches; that is ~150 lines on the standard library.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BackendError
from ..progress import describe
from .base import AdapterArg, Generation, Prompt, SequenceLogprob, as_messages, per_prompt_adapters
from .constraints import ConstraintArg, constraint_key, per_prompt_constraints

SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    key TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    model TEXT NOT NULL,
    value TEXT NOT NULL,
    created REAL NOT NULL
)
"""


class GenerationCache:
    """A key → JSON value store in one SQLite file; :meth:`put_many` is one transaction."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.conn = sqlite3.connect(self.path, timeout=60, check_same_thread=False)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL survives a process kill
            self.conn.execute(SCHEMA)
            self.conn.commit()
        except sqlite3.DatabaseError as err:
            raise BackendError(f"generation cache {self.path}: not a usable SQLite file ({err}); "
                               "delete it or choose another llm.cache path") from None

    def get_many(self, keys: Sequence[str]) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for i in range(0, len(keys), 500):  # SQLite limits the number of bound parameters
            chunk = list(keys[i:i + 500])
            q = f"SELECT key, value FROM entries WHERE key IN ({','.join('?' * len(chunk))})"
            found.update((k, json.loads(v)) for k, v in self.conn.execute(q, chunk))
        return found

    def put_many(self, rows: Sequence[tuple[str, str, str, Any]]) -> None:
        """Store ``(key, kind, model, value)`` rows in one transaction."""
        now = time.time()
        with self.conn:
            self.conn.executemany(
                "INSERT OR REPLACE INTO entries (key, kind, model, value, created) VALUES (?, ?, ?, ?, ?)",
                [(k, kind, model, json.dumps(v), now) for k, kind, model, v in rows],
            )

    def __len__(self) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM entries").fetchone()[0]

    def close(self) -> None:
        self.conn.close()


def make_key(**parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def rows_in_flight(inner) -> int:
    """How many prompts ``inner`` works on at once: ``options.batch_size`` (transformers), ``parallel``
    (llama.cpp), ``max_concurrency`` (HTTP); 16 for a backend with options but none of these (vLLM schedules
    whatever it gets); 1 for one without options, which answers prompt by prompt — a bigger chunk would only
    hold finished rows back from the cache."""
    opts = getattr(inner, "options", None)
    for name in ("batch_size", "parallel", "max_concurrency"):
        value = getattr(opts, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return 16 if opts is not None else 1


class ShardStore:
    """The finished shards of a Ray-engine run: one Parquet file per shard (``key, kind, model, value`` with the
    value as JSON, one row per cache key), written atomically by the driver when the shard's worker returns it.
    The file is named by its kind and the sha256 of its keys, so the same chunk of the same call has the same
    name on a rerun. The run's SQLite cache is filled from each file right after it is written, and
    :meth:`import_into` refills it from every file on start: a driver killed between the two loses nothing."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def name(self, kind: str, keys: Sequence[str]) -> str:
        return f"{kind}-{hashlib.sha256(''.join(keys).encode()).hexdigest()[:20]}"

    def path(self, name: str) -> Path:
        return self.root / f"{name}.parquet"

    def write(self, name: str, rows: Sequence[tuple[str, str, str, Any]]) -> Path:
        import pandas as pd

        from ..io import write_parquet

        df = pd.DataFrame([(k, kind, model, json.dumps(v)) for k, kind, model, v in rows],
                          columns=["key", "kind", "model", "value"])
        return write_parquet(self.path(name), df)

    def read(self, path: Path) -> list[tuple[str, str, str, Any]]:
        import pandas as pd

        df = pd.read_parquet(path)
        return [(k, kind, model, json.loads(v)) for k, kind, model, v in df.itertuples(index=False)]

    def import_into(self, cache: GenerationCache) -> int:
        """Commit every stored shard's rows that the cache lacks; returns how many rows that was."""
        added = 0
        for path in sorted(self.root.glob("*.parquet")) if self.root.is_dir() else []:
            rows = self.read(path)
            have = cache.get_many([r[0] for r in rows])
            new = [r for r in rows if r[0] not in have]
            cache.put_many(new)
            added += len(new)
        return added


class CachedLLM:
    """Any :class:`~reasonrec.llm.base.LLM` behind the persistent cache, with a progress bar.

    ``chunk_size`` prompts are sent to the backend per call and committed together (default:
    :func:`rows_in_flight`). ``progress`` shows items, tokens/s and cache hits. A backend that maps shards over
    workers (``map_shards``: the Ray engine) gets every chunk at once, and each finished chunk is kept as a
    Parquet shard in ``shard_dir`` (default: ``llm_shards/`` beside the cache file) before it is committed.
    """

    def __init__(self, inner, path: str | Path, chunk_size: int | None = None, progress: bool = True,
                 shard_dir: str | Path | None = None):
        self.inner = inner
        self.cache = GenerationCache(path)
        self.chunk_size = chunk_size or rows_in_flight(inner)
        self.progress = progress
        self.model_id = inner.model_id
        self.supports = inner.supports
        self.stats = {"hits": 0, "misses": 0, "completion_tokens": 0}
        self.shards = None
        if hasattr(inner, "map_shards"):
            self.shards = ShardStore(shard_dir or Path(path).parent / "llm_shards")
            self.stats["imported"] = self.shards.import_into(self.cache)

    def __getattr__(self, name: str) -> Any:  # tokenizer, load_adapter, format... of the wrapped backend
        if name == "inner":  # not set yet: avoid infinite recursion
            raise AttributeError(name)
        return getattr(self.inner, name)

    def _prompt_keys(self, prompts: Sequence[Prompt]) -> list[Any]:
        many = getattr(self.inner, "format_many", None)  # a remote backend formats a whole call in one round trip
        if many is not None:
            return many(list(prompts))
        fmt = getattr(self.inner, "format", None)
        return [fmt(p) if fmt is not None else as_messages(p) for p in prompts]

    def _adapter_key(self, adapter: str | None) -> str:
        fn = getattr(self.inner, "adapter_id", None)
        return fn(adapter) if fn is not None else (adapter or "")

    def _run(self, kind: str, keys: list[list[str]], request: Callable[[list[int]], tuple[str, dict]],
             unpack: Callable[[Any], list[list[Any]]], desc: str,
             count_tokens: Callable[[list[Any]], int] = lambda v: 0,
             row_values: Callable[[Any], list[Any]] | None = None) -> tuple[list[list[Any]], set[int]]:
        """``keys[i]`` are the keys of item i's values; ``request(indices)`` is the backend call answering those
        items (method name and keyword arguments) and ``unpack`` turns its result into their values. A backend
        declaring ``row_callback`` hands each finished row to ``on_row`` (converted by ``row_values``), which
        commits it at once. A backend with ``map_shards`` (:class:`~reasonrec.llm.ray_engine.RayBackend`) is
        given every chunk at once as a shard; each finished shard is written as Parquet
        (:class:`ShardStore`), then committed here. Returns the values of every item and the indices computed now
        (the rest were cache hits)."""
        flat = [k for ks in keys for k in ks]
        found = self.cache.get_many(flat)
        todo = [i for i, ks in enumerate(keys) if not all(k in found for k in ks)]
        hits = len(keys) - len(todo)
        self.stats["hits"] += hits
        self.stats["misses"] += len(todo)
        bar = None
        if self.progress and todo:
            from tqdm.auto import tqdm

            # the run's stage and step name the bar ("stage 4/6 infer · user refinement · reflect"); tqdm adds the ETA
            bar = tqdm(total=len(keys), initial=hits, desc=describe(desc), unit="item", leave=False)
        start, tokens = time.perf_counter(), 0

        def rows_of(i: int, vals: list[Any]) -> list[tuple[str, str, str, Any]]:
            if len(vals) != len(keys[i]):
                raise BackendError(f"{desc}: backend returned {len(vals)} values for {len(keys[i])} keys")
            for k, v in zip(keys[i], vals, strict=True):
                found[k] = v
            return [(k, kind, self.model_id, v) for k, v in zip(keys[i], vals, strict=True)]

        def finish(chunk: list[int], values: list[list[Any]], early: set[int]) -> list[tuple[str, str, str, Any]]:
            nonlocal tokens
            rows = []
            for i, vals in zip(chunk, values, strict=True):
                if i not in early:
                    rows += rows_of(i, vals)
                tokens += count_tokens(vals)
            if bar is not None:
                bar.update(len(chunk))
                rate = tokens / max(time.perf_counter() - start, 1e-9)
                bar.set_postfix(tok_s=f"{rate:.1f}", cache_hits=hits)
            return rows

        chunks = [todo[c:c + self.chunk_size] for c in range(0, len(todo), self.chunk_size)]
        try:
            if self.shards is None:
                for chunk in chunks:
                    early: set[int] = set()
                    method, kwargs = request(chunk)
                    if row_values is not None and "row_callback" in self.supports:
                        def on_row(j: int, result: Any, chunk=chunk, early=early) -> None:
                            self.cache.put_many(rows_of(chunk[j], row_values(result)))  # commit a finished row now
                            early.add(chunk[j])

                        kwargs["on_row"] = on_row
                    values = unpack(getattr(self.inner, method)(**kwargs))
                    self.cache.put_many(finish(chunk, values, early))  # the rest of the chunk in one transaction
            else:
                jobs = [(self.shards.name(kind, [k for i in chunk for k in keys[i]]), chunk) for chunk in chunks]

                def on_shard(j: int, result: Any) -> None:
                    name, chunk = jobs[j]
                    rows = finish(chunk, unpack(result), set())
                    self.shards.write(name, rows)  # the shard's Parquet first, then the cache is filled from it
                    self.cache.put_many(rows)

                self.inner.map_shards([(name, *request(chunk)) for name, chunk in jobs], on_shard)
        finally:
            if bar is not None:
                bar.close()
        self.stats["completion_tokens"] += tokens
        return [[found[k] for k in ks] for ks in keys], set(todo)

    def generate(self, prompts: Sequence[Prompt], n: int = 1, temperature: float = 0.0, top_p: float = 1.0,
                 max_new_tokens: int = 256, stop: Sequence[str] | None = None, seed: int = 0,
                 adapter: AdapterArg = None, constraint: ConstraintArg = None) -> list[Generation]:
        adapters = per_prompt_adapters(adapter, len(prompts))
        constraints = per_prompt_constraints(constraint, len(prompts))
        check = getattr(self.inner, "check_constraints", None)
        if check is not None and any(c is not None for c in constraints):
            check(constraints)  # refuse before answering anything from the cache
        params = {"temperature": temperature, "top_p": top_p, "max_new_tokens": max_new_tokens,
                  "stop": list(stop or []), "seed": seed, "n": n}
        keys = []
        for p, a, c in zip(self._prompt_keys(prompts), adapters, constraints, strict=True):
            base = {"kind": "generate", "model": self.model_id, "adapter": self._adapter_key(a),
                    "prompt": p, "params": params}
            if c is not None:  # only constrained calls carry the field, so existing caches keep their keys
                base["constraint"] = constraint_key(c)
            keys.append([make_key(**base, sample=s) for s in range(n)])

        def values_of(g: Generation) -> list[Any]:
            return [[t, g.prompt_tokens, c] for t, c in zip(g.texts, g.completion_tokens, strict=True)]

        def request(idx: list[int]) -> tuple[str, dict]:
            kwargs: dict[str, Any] = dict(prompts=[prompts[i] for i in idx], n=n, temperature=temperature, top_p=top_p,
                                          max_new_tokens=max_new_tokens, stop=stop, seed=seed,
                                          adapter=[adapters[i] for i in idx])
            if any(constraints[i] for i in idx):
                kwargs["constraint"] = [constraints[i] for i in idx]
            return "generate", kwargs

        values, computed = self._run("generate", keys, request, lambda gens: [values_of(g) for g in gens], "generate",
                                     lambda vals: sum(v[2] for v in vals), row_values=values_of)
        return [Generation(texts=[v[0] for v in vals], prompt_tokens=vals[0][1],
                           completion_tokens=[v[2] for v in vals], cached=0 if i in computed else n)
                for i, vals in enumerate(values)]

    def choice_probs(self, prompts: Sequence[Prompt], choices: Sequence[str] = ("Yes", "No"),
                     adapter: AdapterArg = None) -> np.ndarray:
        adapters = per_prompt_adapters(adapter, len(prompts))
        keys = [[make_key(kind="choice_probs", model=self.model_id, adapter=self._adapter_key(a),
                          prompt=p, choices=list(choices))]
                for p, a in zip(self._prompt_keys(prompts), adapters, strict=True)]

        def request(idx: list[int]) -> tuple[str, dict]:
            return "choice_probs", dict(prompts=[prompts[i] for i in idx], choices=choices,
                                        adapter=[adapters[i] for i in idx])

        values, _ = self._run("choice_probs", keys, request, lambda probs: [[row.tolist()] for row in probs],
                              "choice_probs")
        return np.array([v[0] for v in values], dtype=np.float64).reshape(len(prompts), len(choices))

    def sequence_logprob(self, prompts: Sequence[Prompt], completions: Sequence[str],
                         adapter: AdapterArg = None) -> list[SequenceLogprob]:
        adapters = per_prompt_adapters(adapter, len(prompts))
        keys = [[make_key(kind="sequence_logprob", model=self.model_id, adapter=self._adapter_key(a),
                          prompt=p, completion=c)]
                for p, c, a in zip(self._prompt_keys(prompts), completions, adapters, strict=True)]

        def request(idx: list[int]) -> tuple[str, dict]:
            return "sequence_logprob", dict(prompts=[prompts[i] for i in idx],
                                            completions=[completions[i] for i in idx],
                                            adapter=[adapters[i] for i in idx])

        values, _ = self._run("sequence_logprob", keys, request,
                              lambda res: [[[r.total, r.token_logps, r.tokens]] for r in res], "sequence_logprob")
        return [SequenceLogprob(total=v[0][0], token_logps=v[0][1], tokens=v[0][2]) for v in values]
