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


class CachedLLM:
    """Any :class:`~reasonrec.llm.base.LLM` behind the persistent cache, with a progress bar.

    ``chunk_size`` prompts are sent to the backend per call and committed together (default:
    :func:`rows_in_flight`). ``progress`` shows items, tokens/s and cache hits.
    """

    def __init__(self, inner, path: str | Path, chunk_size: int | None = None, progress: bool = True):
        self.inner = inner
        self.cache = GenerationCache(path)
        self.chunk_size = chunk_size or rows_in_flight(inner)
        self.progress = progress
        self.model_id = inner.model_id
        self.supports = inner.supports
        self.stats = {"hits": 0, "misses": 0, "completion_tokens": 0}

    def __getattr__(self, name: str) -> Any:  # tokenizer, load_adapter, format... of the wrapped backend
        if name == "inner":  # not set yet: avoid infinite recursion
            raise AttributeError(name)
        return getattr(self.inner, name)

    def _prompt_key(self, prompt: Prompt) -> Any:
        fmt = getattr(self.inner, "format", None)
        return fmt(prompt) if fmt is not None else as_messages(prompt)

    def _adapter_key(self, adapter: str | None) -> str:
        fn = getattr(self.inner, "adapter_id", None)
        return fn(adapter) if fn is not None else (adapter or "")

    def _run(self, kind: str, keys: list[list[str]], compute: Callable[..., list[list[Any]]],
             desc: str, count_tokens: Callable[[list[Any]], int] = lambda v: 0) -> tuple[list[list[Any]], set[int]]:
        """``keys[i]`` are the keys of item i's values; ``compute(indices, on_values)`` returns their values and
        may hand each one to ``on_values(j, values)`` (j indexes ``indices``) as soon as it is done, which
        commits it at once. Returns the values of every item and the indices computed now (the rest were cache
        hits)."""
        flat = [k for ks in keys for k in ks]
        found = self.cache.get_many(flat)
        todo = [i for i, ks in enumerate(keys) if not all(k in found for k in ks)]
        hits = len(keys) - len(todo)
        self.stats["hits"] += hits
        self.stats["misses"] += len(todo)
        bar = None
        if self.progress and todo:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(keys), initial=hits, desc=desc, unit="item", leave=False)
        start, tokens = time.perf_counter(), 0

        def rows_of(i: int, vals: list[Any]) -> list[tuple[str, str, str, Any]]:
            if len(vals) != len(keys[i]):
                raise BackendError(f"{desc}: backend returned {len(vals)} values for {len(keys[i])} keys")
            for k, v in zip(keys[i], vals, strict=True):
                found[k] = v
            return [(k, kind, self.model_id, v) for k, v in zip(keys[i], vals, strict=True)]

        try:
            for c in range(0, len(todo), self.chunk_size):
                chunk, early = todo[c:c + self.chunk_size], set()

                def on_values(j: int, vals: list[Any], chunk=chunk, early=early) -> None:
                    self.cache.put_many(rows_of(chunk[j], vals))  # a row the backend finished: commit it now
                    early.add(chunk[j])

                values = compute(chunk, on_values)
                rows = []
                for i, vals in zip(chunk, values, strict=True):
                    if i not in early:
                        rows += rows_of(i, vals)
                    tokens += count_tokens(vals)
                self.cache.put_many(rows)  # the rest of the chunk in one transaction
                if bar is not None:
                    bar.update(len(chunk))
                    rate = tokens / max(time.perf_counter() - start, 1e-9)
                    bar.set_postfix(tok_s=f"{rate:.1f}", cache_hits=hits)
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
        for p, a, c in zip(prompts, adapters, constraints, strict=True):
            base = {"kind": "generate", "model": self.model_id, "adapter": self._adapter_key(a),
                    "prompt": self._prompt_key(p), "params": params}
            if c is not None:  # only constrained calls carry the field, so existing caches keep their keys
                base["constraint"] = constraint_key(c)
            keys.append([make_key(**base, sample=s) for s in range(n)])

        def values_of(g: Generation) -> list[Any]:
            return [[t, g.prompt_tokens, c] for t, c in zip(g.texts, g.completion_tokens, strict=True)]

        def compute(idx: list[int], on_values) -> list[list[Any]]:
            extra: dict[str, Any] = {}
            if any(constraints[i] for i in idx):
                extra["constraint"] = [constraints[i] for i in idx]
            if "row_callback" in self.supports:  # the backend reports each row as it finishes
                extra["on_row"] = lambda j, g: on_values(j, values_of(g))
            gens = self.inner.generate([prompts[i] for i in idx], n=n, temperature=temperature, top_p=top_p,
                                       max_new_tokens=max_new_tokens, stop=stop, seed=seed,
                                       adapter=[adapters[i] for i in idx], **extra)
            return [values_of(g) for g in gens]

        values, computed = self._run("generate", keys, compute, "generate", lambda vals: sum(v[2] for v in vals))
        return [Generation(texts=[v[0] for v in vals], prompt_tokens=vals[0][1],
                           completion_tokens=[v[2] for v in vals], cached=0 if i in computed else n)
                for i, vals in enumerate(values)]

    def choice_probs(self, prompts: Sequence[Prompt], choices: Sequence[str] = ("Yes", "No"),
                     adapter: AdapterArg = None) -> np.ndarray:
        adapters = per_prompt_adapters(adapter, len(prompts))
        keys = [[make_key(kind="choice_probs", model=self.model_id, adapter=self._adapter_key(a),
                          prompt=self._prompt_key(p), choices=list(choices))]
                for p, a in zip(prompts, adapters, strict=True)]

        def compute(idx: list[int], on_values) -> list[list[Any]]:
            probs = self.inner.choice_probs([prompts[i] for i in idx], choices, adapter=[adapters[i] for i in idx])
            return [[row.tolist()] for row in probs]

        values, _ = self._run("choice_probs", keys, compute, "choice_probs")
        return np.array([v[0] for v in values], dtype=np.float64).reshape(len(prompts), len(choices))

    def sequence_logprob(self, prompts: Sequence[Prompt], completions: Sequence[str],
                         adapter: AdapterArg = None) -> list[SequenceLogprob]:
        adapters = per_prompt_adapters(adapter, len(prompts))
        keys = [[make_key(kind="sequence_logprob", model=self.model_id, adapter=self._adapter_key(a),
                          prompt=self._prompt_key(p), completion=c)]
                for p, c, a in zip(prompts, completions, adapters, strict=True)]

        def compute(idx: list[int], on_values) -> list[list[Any]]:
            res = self.inner.sequence_logprob([prompts[i] for i in idx], [completions[i] for i in idx],
                                              adapter=[adapters[i] for i in idx])
            return [[[r.total, r.token_logps, r.tokens]] for r in res]

        values, _ = self._run("sequence_logprob", keys, compute, "sequence_logprob")
        return [SequenceLogprob(total=v[0][0], token_logps=v[0][1], tokens=v[0][2]) for v in values]
