"""``engine: ray`` (reasonrec/llm/ray_engine.py) on a local Ray cluster this module starts (2 CPUs, loopback, no
dashboard): the R4ec smoke config's construct stage gives the same rows on both engines, seeded sampling too, and
a worker killed with ``kill -9`` mid-call costs exactly its shard: the call finishes, no row is missing or
duplicated, every other shard ran once. Default cost ≈ 60 s on 2 loaded cores (cluster start, two worker
start-ups, one of them a restart); the smoke-config comparison is ``slow``."""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

ray = pytest.importorskip("ray", reason="the [ray] extra is not installed")

from reasonrec.llm.base import load_llm  # noqa: E402
from reasonrec.llm.engine import EngineSection, use_engine  # noqa: E402

SMOKE = Path(__file__).parents[1] / "configs" / "r4ec" / "smoke.yaml"
RAY = EngineSection(kind="ray", workers=2)


@pytest.fixture(scope="module")
def cluster():
    """One local cluster for the module: 2 CPUs = 2 one-CPU workers. Workers inherit this process's environment
    (PYTHONPATH, HF offline flags), so they import the same reasonrec."""
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
             configure_logging=False)
    yield
    ray.shutdown()


def _cache_rows(path: Path) -> dict[str, str]:
    with sqlite3.connect(path) as conn:
        return dict(conn.execute("SELECT key, value FROM entries"))


def _shard_keys(folder: Path) -> list[str]:
    return [k for f in sorted(folder.glob("*.parquet")) for k in pd.read_parquet(f)["key"]]


@pytest.mark.slow  # ~50 s on 2 loaded cores: two teachers, two worker start-ups, prepare_splits
def test_smoke_construct_stage_same_rows_on_ray_as_local(cluster, ml100k_dir, tmp_path):
    from reasonrec.methods import load_experiment, resolve_paths
    from reasonrec.methods.common import prepare_splits
    from reasonrec.methods.r4ec import stage_construct
    from reasonrec.runs import RunDir

    out = {}
    for kind in ("local", "ray"):
        _, cfg = load_experiment(SMOKE)
        resolve_paths(cfg, tmp_path / kind, ml100k_dir, engine=kind)
        run = RunDir(cfg.run_dir)
        ctx = prepare_splits(cfg.data, run, subset=cfg.subset)
        with use_engine(cfg.engine if kind == "local" else RAY):
            out[kind] = stage_construct(cfg, run, ctx)
    assert out["ray"] == out["local"]  # the branch counts of Algorithm 1
    for name in sorted(p.name for p in (tmp_path / "local" / "construct").glob("*.parquet")):
        local = pd.read_parquet(tmp_path / "local" / "construct" / name)
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "ray" / "construct" / name), local)
    rows = {k: _cache_rows(tmp_path / k / "llm_cache.sqlite") for k in out}
    assert rows["ray"] == rows["local"] and len(rows["ray"]) > 0  # every answer, same key, same text
    keys = _shard_keys(tmp_path / "ray" / "llm_shards")  # the cache was filled from these shards
    assert sorted(keys) == sorted(rows["ray"]) and len(set(keys)) == len(keys)
    assert not (tmp_path / "local" / "llm_shards").exists()


def test_worker_killed_mid_stage_redoes_only_its_shard(cluster, tmp_path):
    prompts = [f"Describe the plot of movie number {i} in one sentence." for i in range(40)]
    with use_engine(RAY):
        llm = load_llm("tiny-random", backend="transformers", cache=tmp_path / "run" / "c.sqlite", batch_size=4)
    backend, shards = llm.inner, tmp_path / "run" / "llm_shards"
    victim, killed = backend.pids[0], threading.Event()

    def kill_when_two_shards_are_done():
        deadline = time.time() + 120
        while time.time() < deadline and len(list(shards.glob("*.parquet"))) < 2:
            time.sleep(0.02)
        os.kill(victim, signal.SIGKILL)  # the worker process itself, as the OOM killer or a lost node would
        killed.set()

    killer = threading.Thread(target=kill_when_two_shards_are_done, daemon=True)
    killer.start()
    gens = llm.generate(prompts, max_new_tokens=24)
    killer.join(5)
    assert killed.is_set() and len(gens) == len(prompts) and all(g.texts for g in gens)
    attempts, lost = backend.stats["attempts"], backend.stats["lost"]
    assert len(attempts) == 10 and backend.stats["shards"] == 10
    assert len(lost) == 1  # the shard the dead worker held ...
    assert {n for n, a in attempts.items() if a > 1} == {lost[0][0]}  # ... alone was run twice
    assert attempts[lost[0][0]] == 2
    keys = _shard_keys(shards)  # one file per shard, every row once
    assert len(list(shards.glob("*.parquet"))) == 10 and len(keys) == len(set(keys)) == len(prompts)
    assert sorted(keys) == sorted(_cache_rows(tmp_path / "run" / "c.sqlite"))
    # the restarted worker answers again, and no row differs from a run nobody killed
    local = load_llm("tiny-random", backend="transformers", cache=tmp_path / "local.sqlite", batch_size=4)
    assert [g.text for g in gens] == [g.text for g in local.generate(prompts, max_new_tokens=24)]
    again = llm.generate(prompts, max_new_tokens=24)  # a finished shard is never asked again
    assert all(g.cached == 1 for g in again) and backend.stats["shards"] == 10

    # seeded sampling gives the same rows too (every backend seeds from the call's own rows), and choice_probs
    kwargs = dict(n=2, temperature=1.0, top_p=0.9, max_new_tokens=8, seed=7)
    sampled = llm.generate(prompts[:12], **kwargs)
    assert [g.texts for g in sampled] == [g.texts for g in local.generate(prompts[:12], **kwargs)]
    assert len({t for g in sampled for t in g.texts}) > 1  # really sampled
    probs = llm.choice_probs(prompts[:5], ("Yes", "No"))
    assert probs.shape == (5, 2) and abs(probs - local.choice_probs(prompts[:5], ("Yes", "No"))).max() < 1e-6
    backend.close()


def test_engine_settings_from_the_command_line_and_gpu_workers(ml100k_dir):
    from reasonrec.llm.ray_engine import worker_resources
    from reasonrec.methods import load_experiment, resolve_paths

    _, cfg = load_experiment(SMOKE)
    assert cfg.engine.kind == "local"
    resolve_paths(cfg, address="10.0.0.1:6379")  # --address alone implies --engine ray
    assert (cfg.engine.kind, cfg.engine.address) == ("ray", "10.0.0.1:6379")
    with pytest.raises(Exception, match="local"):
        resolve_paths(cfg, engine="spark")
    from typer.testing import CliRunner

    from reasonrec.cli import app

    r = CliRunner().invoke(app, ["run", str(SMOKE), "--engine", "ray", "--dry-run", "--data-dir", str(ml100k_dir)])
    assert r.exit_code == 0 and ": ok" in r.output, r.output
    # vLLM replicas reserve their tensor-parallel GPUs; CPU backends none (the GPU path is not run here)
    assert worker_resources("vllm", {"tensor_parallel_size": 2}, EngineSection(kind="ray")) == {
        "num_cpus": 1.0, "num_gpus": 2.0}
    assert worker_resources("transformers", {}, EngineSection(kind="ray", cpus_per_worker=2)) == {
        "num_cpus": 2.0, "num_gpus": 0.0}
    # workers: None → as many as the cluster holds (8 GPUs, 64 CPUs: 8 vLLM replicas of 1 GPU + 4 CPUs)
    from reasonrec.llm.ray_engine import _ActorPool

    pool = _ActorPool()
    pool.resources = {"num_cpus": 4.0, "num_gpus": 1.0}
    assert pool._fit({"CPU": 64.0, "GPU": 8.0}) == 8
    pool.resources = {"num_cpus": 1.0, "num_gpus": 0.0}
    assert pool._fit({"CPU": 2.0}) == 2


@pytest.mark.slow  # two more worker start-ups (~20 s on 2 loaded cores)
def test_encoding_on_ray_gives_the_local_vectors(cluster, ml100k_dir):
    import numpy as np

    from reasonrec.knowledge import load_encoder
    from reasonrec.llm.ray_engine import RayEncoder

    items = pd.read_csv(ml100k_dir / "u.item", sep="|", header=None, encoding="latin-1")
    texts = [f"{t}, released {d}" for t, d in zip(items[1], items[2], strict=True)][:600]
    local = load_encoder("minilm")
    with use_engine(RAY):
        remote = load_encoder("minilm")
    remote.shard_rows = 128  # 5 shards over 2 workers
    assert isinstance(remote, RayEncoder) and (remote.name, remote.dim) == (local.name, local.dim)
    got = remote.encode(texts)
    assert got.shape == (600, local.dim) and remote.stats["shards"] == 5
    np.testing.assert_allclose(got, local.encode(texts), atol=1e-5)  # batches differ in padding only
    remote.close()
