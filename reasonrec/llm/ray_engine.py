"""``engine: ray``: a run's LLM calls as shards of rows over model replicas on a Ray cluster.

The seam is the LLM interface, one level below :class:`~reasonrec.llm.cache.CachedLLM`: :class:`RayBackend` is
an :class:`~reasonrec.llm.base.LLM` whose replicas are Ray actors (:class:`LLMWorker`, each holding one model:
transformers or llama.cpp on CPU nodes, vLLM on GPU nodes), and ``load_llm`` puts it behind the same cache
under ``engine: ray`` (:mod:`reasonrec.llm.engine`). The cache computes the keys and the chunks of rows it
would send to a local backend, and hands them all to :meth:`RayBackend.map_shards`; each finished chunk comes
back to the driver, is written as one Parquet shard (atomically, named by the sha256 of its row keys:
:class:`~reasonrec.llm.cache.ShardStore`) and committed to the run's SQLite cache. So methods (R4ec, TrackRec)
do not change, a finished shard is never asked again (its rows are cache hits on any rerun, on either engine),
and the SQLite cache stays the single-machine path: both engines read and fill the same file, with the same
keys.

Same rows. A shard is exactly the chunk the local engine would send in one backend call (the cache's
``rows_in_flight``: the backend's batch), with the same arguments. Greedy rows are the same forward passes;
sampled rows too, because every backend seeds from the call's seed and the call's own rows (transformers:
``_batch_seed`` of the batch's tokens; llama.cpp and vLLM: per row and sample), never from what ran before in
the process. ``tests/test_ray_engine.py`` checks the rows of the R4ec smoke config's construct stage on both.

Why plain actors rather than Ray Data's ``map_batches`` with an actor pool. The cache decides the shards (they
must equal the local chunks, or sampled rows change) and must know which shard a dead worker held, to redo it
alone and say so; Ray Data re-batches its blocks and retries lost tasks out of sight. It also plans and starts
a streaming executor per dataset: ``benchmarks/scaleout.py`` measures that against an actor round trip on this
machine, and R4ec's Algorithm 1 issues dozens of small calls per stage. What is left here is the few lines
``ray.wait`` needs: hand the next shard to an idle actor; a shard whose actor died (``ActorDiedError``: a
``kill -9``, a lost node, an OOM kill) goes back to the front of the queue, and the actor is restarted by Ray
(``max_restarts=-1``) with its model reloaded; an exception in the backend is raised, not retried.

GPU nodes: ``backend: vllm`` gives each actor ``gpus_per_worker`` GPUs (default: the engine's
``tensor_parallel_size``) and our :class:`~reasonrec.llm.vllm_backend.VLLMBackend` inside; one vLLM engine per
actor schedules its shard with continuous batching. (``ray.data.llm``'s processor would be the other route; it
is built on the Ray Data pipeline argued against above, and its rows would not share our cache keys.) That path
is written but not run here (no GPU): on CPU the tests check the actor's resource request.

Encoders: under ``engine: ray`` :func:`reasonrec.knowledge.encoders.load_encoder` returns a :class:`RayEncoder`,
whose ``encode`` maps shards of texts over encoder replicas the same way (no Parquet: the encode stage writes its
own artifact when it completes).

Adapters: ``load_adapter`` is recorded on the driver and sent with every shard; a worker loads what it lacks
(after a restart too). Adapter paths must be readable from every node (a shared filesystem), as model paths are.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import BackendError, ConfigError
from .engine import EngineSection

log = logging.getLogger(__name__)


def _ray():
    try:
        import ray
    except ImportError:  # pragma: no cover - the extra is missing
        raise ConfigError("engine: ray needs Ray: pip install 'reasonrec[ray]'") from None
    return ray


def worker_resources(backend: str, options: dict[str, Any], engine: EngineSection) -> dict[str, float]:
    """What one replica reserves: ``cpus_per_worker`` CPUs, and GPUs for vLLM (its tensor-parallel degree unless
    ``gpus_per_worker`` says otherwise)."""
    gpus = engine.gpus_per_worker
    if gpus is None:
        gpus = float(options.get("tensor_parallel_size", 1)) if backend == "vllm" else 0.0
    return {"num_cpus": float(engine.cpus_per_worker), "num_gpus": float(gpus)}


class LLMWorker:
    """One model replica (wrapped by ``ray.remote`` in :class:`RayBackend`): loads the backend in its own
    process, then answers shards."""

    def __init__(self, name: str, backend: str, options: dict[str, Any]):
        from .base import load_llm

        self.llm = load_llm(name, backend=backend, **options)
        self.adapters: dict[str, str] = {}

    def info(self) -> dict[str, Any]:
        return {"model_id": self.llm.model_id, "supports": self.llm.supports, "pid": os.getpid(),
                "options": getattr(self.llm, "options", None)}

    def _ensure(self, adapters: dict[str, str]) -> None:
        for name, path in adapters.items():
            if self.adapters.get(name) != path:
                self.llm.load_adapter(name, path)
                self.adapters[name] = path

    def format_many(self, prompts: list, adapters: dict[str, str]) -> list:
        fmt = getattr(self.llm, "format", None)
        from .base import as_messages

        return [fmt(p) if fmt is not None else as_messages(p) for p in prompts]

    def adapter_id(self, name: str | None, adapters: dict[str, str]) -> str:
        self._ensure(adapters)
        fn = getattr(self.llm, "adapter_id", None)
        return fn(name) if fn is not None else (name or "")

    def check_constraints(self, constraints: list) -> None:
        check = getattr(self.llm, "check_constraints", None)
        if check is not None:
            check(constraints)

    def run(self, method: str, kwargs: dict[str, Any], adapters: dict[str, str]) -> tuple[int, Any]:
        self._ensure(adapters)
        return os.getpid(), getattr(self.llm, method)(**kwargs)


class _ActorPool:
    """``workers`` Ray actors of one kind, each a replica, and the few lines that map shards over them."""

    def _start(self, worker_cls: type, args: tuple, engine: EngineSection, resources: dict[str, float]) -> list:
        ray = _ray()
        if not ray.is_initialized():
            # address None: RAY_ADDRESS if set, else a local cluster on this machine
            ray.init(address=engine.address, include_dashboard=False, log_to_driver=False)
        self.engine, self.resources = engine, resources
        n = engine.workers or self._fit(ray.cluster_resources())
        if n < 1:
            raise ConfigError(f"engine: the Ray cluster has {ray.cluster_resources()} — not enough for one worker "
                              f"of {self.resources}")
        actor = ray.remote(max_restarts=-1, max_task_retries=0, **resources)(worker_cls)
        # Ray sets each actor's OMP/torch threads to its num_cpus, so replicas do not fight over the cores.
        self.workers = [actor.remote(*args) for _ in range(n)]
        infos = ray.get([w.info.remote() for w in self.workers])
        self.pids = [i["pid"] for i in infos]
        self._adapters: dict[str, str] = {}
        self.stats: dict[str, Any] = {"shards": 0, "attempts": {}, "lost": []}
        self._probes: dict[Any, Any] = {}  # "are you back?" calls on restarting workers → the worker
        return infos

    def _fit(self, resources: dict[str, float]) -> int:
        names = {"num_cpus": "CPU", "num_gpus": "GPU"}  # Ray's resource names
        fits = [int(resources.get(names[k], 0) // v) for k, v in self.resources.items() if v]
        return min(fits) if fits else 1

    def map_shards(self, shards: Sequence[tuple[str, str, dict[str, Any]]],
                   on_done: Callable[[int, Any], None]) -> None:
        """Run every ``(name, method, kwargs)`` shard on some worker; ``on_done(j, result)`` on the driver as
        each one finishes (in completion order). A shard whose worker died is queued again, up to
        ``engine.max_attempts`` tries; Ray restarts the worker."""
        ray = _ray()
        from ray.exceptions import RayActorError, RayTaskError

        queue = deque(range(len(shards)))
        idle = deque(w for w in self.workers if all(w is not v for v in self._probes.values()))
        pending: dict[Any, tuple[int, Any]] = {}  # shard j on a worker
        attempts = self.stats["attempts"]
        while queue or pending:
            while queue and idle:
                j, worker = queue.popleft(), idle.popleft()
                name, method, kwargs = shards[j]
                attempts[name] = attempts.get(name, 0) + 1
                pending[worker.run.remote(method, kwargs, dict(self._adapters))] = (j, worker)
            [ref], _ = ray.wait([*pending, *self._probes], num_returns=1)
            if ref in self._probes:  # is a restarted worker back?
                worker = self._probes.pop(ref)
                try:
                    ray.get(ref)
                except RayActorError:
                    time.sleep(0.2)
                    self._probes[worker.info.remote()] = worker
                except RayTaskError as err:
                    raise BackendError(f"a restarted Ray worker failed to load its model: {err}") from None
                else:
                    idle.append(worker)
                continue
            j, worker = pending.pop(ref)
            name = shards[j][0]
            try:
                _pid, result = ray.get(ref)
            except RayTaskError as err:  # the backend raised: the same shard would raise again
                for other in pending:
                    ray.cancel(other)
                raise BackendError(f"shard {name}: {getattr(err, 'cause', None) or err}") from None
            except RayActorError as err:  # the worker died (kill -9, node lost): redo this shard alone
                self.stats["lost"].append((name, str(err.actor_id) if getattr(err, "actor_id", None) else None))
                if attempts[name] >= self.engine.max_attempts:
                    raise BackendError(f"shard {name}: its worker died {attempts[name]} times "
                                       f"(engine.max_attempts); last: {err}") from None
                log.warning("shard %s: its Ray worker died (%s); running it again (attempt %d of %d)", name,
                            type(err).__name__, attempts[name] + 1, self.engine.max_attempts)
                queue.appendleft(j)  # on whichever worker is free first
                # Ray restarts the actor (max_restarts=-1) and reloads its model; probe until it answers
                self._probes[worker.info.remote()] = worker
                continue
            idle.append(worker)
            self.stats["shards"] += 1
            on_done(j, result)

    def _ask(self, method: str, *args: Any, timeout: float = 300.0) -> Any:
        """One small call (formatting, adapter ids) on the first worker that answers: a restarting one is
        skipped."""
        ray = _ray()
        from ray.exceptions import RayActorError

        deadline = time.time() + timeout
        while True:
            for worker in self.workers:
                if any(worker is v for v in self._probes.values()):
                    continue
                try:
                    return ray.get(getattr(worker, method).remote(*args))
                except RayActorError:
                    self._probes[worker.info.remote()] = worker
            if time.time() > deadline:
                raise BackendError(f"no Ray worker answered {method} within {timeout:.0f} s")
            ready, _ = ray.wait(list(self._probes), num_returns=1, timeout=5)
            for ref in ready:
                worker = self._probes.pop(ref)
                try:
                    ray.get(ref)
                except RayActorError:
                    self._probes[worker.info.remote()] = worker

    def close(self) -> None:
        ray = _ray()
        for w in self.workers:
            ray.kill(w, no_restart=True)
        self.workers = []



class RayBackend(_ActorPool):
    """An :class:`~reasonrec.llm.base.LLM` answered by ``workers`` Ray actors, one model replica each.

    Calls made on it directly are split into shards of its batch and mapped over the workers (nothing kept);
    behind :class:`~reasonrec.llm.cache.CachedLLM` the cache shards, keeps and commits (:meth:`map_shards`).
    ``stats``: ``shards`` finished, ``attempts`` per shard name, ``lost`` (shard, Ray actor id) for every shard
    whose worker died; ``pids``: the workers' processes as started.
    """

    def __init__(self, name: str, backend: str, options: dict[str, Any], engine: EngineSection):
        infos = self._start(LLMWorker, (name, backend, options), engine, worker_resources(backend, options, engine))
        self.model_id = infos[0]["model_id"]
        self.supports = frozenset(infos[0]["supports"]) - {"row_callback"}  # rows come back per shard
        self.options = infos[0]["options"]  # the cache sizes its chunks (= shards) by the backend's batch
        self._adapter_ids: dict[tuple[str | None, str], str] = {}

    # ------------------------------------------------------------------------------ what the cache asks

    def format_many(self, prompts: list) -> list:
        return self._ask("format_many", prompts, self._adapters)

    def format(self, prompt) -> Any:
        return self.format_many([prompt])[0]

    def load_adapter(self, name: str, path) -> None:
        self._adapters[name] = str(path)

    @property
    def adapters(self) -> list[str]:
        return list(self._adapters)

    def adapter_id(self, name: str | None) -> str:
        key = (name, self._adapters.get(name or "", ""))
        if key not in self._adapter_ids:
            self._adapter_ids[key] = self._ask("adapter_id", name, self._adapters)
        return self._adapter_ids[key]

    def check_constraints(self, constraints: list) -> None:
        self._ask("check_constraints", list(constraints))

    # ------------------------------------------------------------------------------ direct calls (no cache)

    def _direct(self, method: str, prompts: Sequence, per_row: dict[str, Any], **common: Any) -> list:
        from .cache import rows_in_flight

        size = rows_in_flight(self)
        out: list[Any] = [None] * len(prompts)
        shards = []
        for c in range(0, len(prompts), size):
            rows = slice(c, c + size)
            kwargs = {"prompts": list(prompts[rows]), **common}
            for key, values in per_row.items():
                kwargs[key] = values if values is None or isinstance(values, str) else list(values)[rows]
            shards.append((f"{method}-{c}", method, kwargs))

        def keep(j: int, result: Any) -> None:
            start = j * size
            out[start:start + len(result)] = list(result)

        self.map_shards(shards, keep)
        return out

    def generate(self, prompts, n=1, temperature=0.0, top_p=1.0, max_new_tokens=256, stop=None, seed=0,
                 adapter=None, constraint=None):
        from .constraints import Constraint

        per_row = {"adapter": adapter}
        if constraint is not None:
            per_row["constraint"] = [constraint] * len(prompts) if isinstance(constraint, Constraint) else constraint
        return self._direct("generate", prompts, per_row, n=n, temperature=temperature, top_p=top_p,
                            max_new_tokens=max_new_tokens, stop=stop, seed=seed)

    def choice_probs(self, prompts, choices=("Yes", "No"), adapter=None):
        import numpy as np

        rows = self._direct("choice_probs", prompts, {"adapter": adapter}, choices=choices)
        return np.array(rows, dtype=np.float64).reshape(len(prompts), len(choices))

    def sequence_logprob(self, prompts, completions, adapter=None):
        return self._direct("sequence_logprob", prompts, {"adapter": adapter, "completions": completions})


class EncoderWorker:
    """One text-encoder replica (wrapped by ``ray.remote`` in :class:`RayEncoder`)."""

    def __init__(self, name: str, device: str):
        from ..knowledge.encoders import load_encoder

        self.encoder = load_encoder(name, device)

    def info(self) -> dict[str, Any]:
        e = self.encoder
        return {"name": e.name, "dim": e.dim, "max_length": e.max_length, "pid": os.getpid()}

    def run(self, method: str, kwargs: dict[str, Any], adapters: dict[str, str]) -> tuple[int, Any]:
        return os.getpid(), getattr(self.encoder, method)(**kwargs)


class RayEncoder(_ActorPool):
    """A :class:`~reasonrec.knowledge.encoders.TextEncoder` whose ``encode`` maps shards of ``shard_rows`` texts
    over Ray actors (``load_encoder`` under ``engine: ray``). The vectors come back in order; a shard whose worker
    died is redone alone, as for LLM calls. Nothing is kept per shard: an encode stage writes its own artifact at
    the end, and encoding is minutes where generation is hours."""

    shard_rows = 1024

    def __init__(self, name: str, device: str, engine: EngineSection):
        infos = self._start(EncoderWorker, (name, device), engine,
                            {"num_cpus": float(engine.cpus_per_worker), "num_gpus": float(engine.gpus_per_worker or 0)})
        self.name, self.dim, self.max_length = infos[0]["name"], infos[0]["dim"], infos[0]["max_length"]

    def encode(self, texts: list[str], batch_size: int = 64, progress: bool = False):
        import numpy as np

        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        starts = list(range(0, len(texts), self.shard_rows))
        parts: list[Any] = [None] * len(starts)
        shards = [(f"encode-{c}", "encode", {"texts": texts[c:c + self.shard_rows], "batch_size": batch_size})
                  for c in starts]

        def keep(j: int, result: Any) -> None:
            parts[j] = result

        self.map_shards(shards, keep)
        return np.concatenate(parts).astype(np.float32)
