"""Every shipped experiment config validates, and a config's bad value is one error naming the file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from reasonrec.errors import ConfigError
from reasonrec.methods import load_experiment

ROOT = Path(__file__).parents[1]
BENCHES = sorted((ROOT / "configs" / "bench").glob("*.yaml"))
# configs/accelerate/ holds `accelerate launch` configs, not experiments (tests/test_train_accelerate.py reads them)
CONFIGS = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if p not in BENCHES and p.parent.name != "accelerate")


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_shipped_config_validates(path):
    module, cfg = load_experiment(path)
    assert cfg.method == module.__name__.rsplit(".", 1)[-1]


@pytest.mark.parametrize("path", BENCHES, ids=lambda p: p.name)
def test_bench_files_validate_and_name_method_configs_that_validate(path):
    from reasonrec.bench import load_bench

    bench = load_bench(path)
    methods = [load_experiment(ROOT / m)[1].method for m in bench.methods]
    assert len(methods) == len(set(methods)) >= 2


def test_r4ec_inference_adapters_come_from_the_run(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("method: r4ec\nrun_dir: runs/x\ntrain:\n  infer_backend: vllm\n"
                    "  infer_options: {adapters: {user_actor: /elsewhere}}\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*train\.infer_options.*adapters"):
        load_experiment(path)
