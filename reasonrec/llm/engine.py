"""Where a run's LLM calls execute: ``local`` (this process) or ``ray`` (model replicas on a Ray cluster).

The engine is a property of the *run*, not of a method: ``engine:`` in any experiment config (or
``reasonrec run CONFIG --engine ray --address ADDR``). :func:`reasonrec.methods.run_loaded` activates it for the
duration of the run with :func:`use_engine`, and :func:`reasonrec.llm.base.load_llm` reads it: under ``ray`` a
backend becomes :class:`reasonrec.llm.ray_engine.RayBackend` (one replica per Ray actor) behind the same
:class:`~reasonrec.llm.cache.CachedLLM`. A context variable rather than an argument for the same reason as
:mod:`reasonrec.progress`: the LLMs are loaded inside method stages, several calls below the runner that knows the
engine, and threading it through every stage would change every method for a setting that changes no result.
The engine is not part of any stage fingerprint: the same rows come out whichever engine computes them (see
:mod:`reasonrec.llm.ray_engine`, "Same rows"), so switching engine mid-run resumes, it does not recompute.

This module does not import Ray; only ``engine: ray`` needs the ``[ray]`` extra.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Literal

from ..config import Section


class EngineSection(Section):
    """The ``engine:`` block of an experiment config.

    Fields:
        kind: ``local`` (default: every LLM call in this process) or ``ray``.
        address: the Ray cluster to join (``ray://host:10001`` or ``host:6379``, as ``ray start`` prints);
            ``None`` joins ``RAY_ADDRESS`` if set, else starts a local cluster on this machine.
        workers: model replicas (Ray actors); ``None`` = as many as the cluster's CPUs (and GPUs, for vLLM)
            hold at ``cpus_per_worker`` / ``gpus_per_worker`` each.
        cpus_per_worker: CPUs each replica reserves (also its torch / llama.cpp thread count).
        gpus_per_worker: GPUs each replica reserves; ``None`` = 0 for CPU backends, and for vLLM its
            ``tensor_parallel_size`` (default 1).
        max_attempts: how often one shard is tried when its worker dies (a lost node, an OOM kill) before the
            stage fails; a shard whose backend raises is not retried (it would raise again).
    """

    kind: Literal["local", "ray"] = "local"
    address: str | None = None
    workers: int | None = None
    cpus_per_worker: float = 1.0
    gpus_per_worker: float | None = None
    max_attempts: int = 3


_ENGINE: ContextVar[EngineSection | None] = ContextVar("reasonrec_engine", default=None)


def current_engine() -> EngineSection:
    """The engine of the run in progress; ``local`` outside one (and inside every Ray worker)."""
    return _ENGINE.get() or EngineSection()


@contextlib.contextmanager
def use_engine(engine: EngineSection | None) -> Iterator[EngineSection]:
    """Run the ``with`` block's LLM loads on ``engine`` (``None`` keeps the current one)."""
    if engine is None:
        yield current_engine()
        return
    token = _ENGINE.set(engine)
    try:
        yield engine
    finally:
        _ENGINE.reset(token)
