"""Every name a config gives is resolved before any stage runs (``reasonrec run CONFIG --dry-run`` and the start of
every run), hub ids come from the local cache, and bad CLI flags give one line."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from reasonrec.errors import BackendError, ConfigError
from reasonrec.methods import check_experiment, load_experiment, resolve_paths, run_experiment

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(REPO))


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty local Hugging Face cache (read at call time by reasonrec.hub)."""
    import huggingface_hub.constants as hub_constants

    cache = tmp_path / "hf-hub"
    cache.mkdir()
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    return cache


def _cache_model(cache: Path, repo_id: str, folder: Path) -> Path:
    """Lay ``folder`` out as the hub cache does after ``huggingface-cli download repo_id``."""
    root = cache / f"models--{repo_id.replace('/', '--')}"
    commit = "0" * 40
    shutil.copytree(folder, root / "snapshots" / commit)
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    return root / "snapshots" / commit


def _config(tmp_path: Path, ml100k_dir: Path, **sections) -> Path:
    cfg = {"method": "r4ec", "run_dir": str(tmp_path / "run"),
           "data": {"dataset": "ml-100k", "protocol": "kar", "data_dir": str(ml100k_dir)},
           "subset": {"users": 5}, "teacher": {"name": "smollm2-135m"}, "rec": {"backbones": ["din"]}}
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value}
    path = tmp_path / "r4ec.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _problems(path: Path, data_dir: Path | None = None) -> list[str]:
    module, cfg = load_experiment(path)
    resolve_paths(cfg, data_dir=data_dir)
    try:
        check_experiment(module, cfg, str(path))
    except ConfigError as err:
        return str(err).splitlines()
    return []


def test_a_good_config_passes(tmp_path, ml100k_dir, hub_cache):
    assert _problems(_config(tmp_path, ml100k_dir)) == []


@pytest.mark.parametrize(("sections", "expected"), [
    ({"rec": {"backbones": ["din", "dinn"]}},
     "key 'rec.backbones[1]': unknown CTR backbone 'dinn'; did you mean 'din'?"),
    ({"train": {"base_model": "smolm2-135m"}}, "key 'train.base_model': unknown model 'smolm2-135m': did you mean "
                                               "'smollm2-135m'?"),
    ({"teacher": {"name": "gpt-4o"}}, "key 'teacher.name': unknown model 'gpt-4o'"),
    ({"teacher": {"name": "Qwen/Qwen2.5-7B-Instruct"}},
     "key 'teacher.name': 'Qwen/Qwen2.5-7B-Instruct' is neither a local folder nor a Hugging Face model in the local "
     "cache; download it with `huggingface-cli download Qwen/Qwen2.5-7B-Instruct`"),
    ({"teacher": {"name": "runs/none.gguf"}}, "key 'teacher.name': 'runs/none.gguf': the llama.cpp backend needs"),
    ({"teacher": {"options": {"batch_sise": 4}}}, "unknown key 'batch_sise'; did you mean 'batch_size'?"),
    ({"train": {"infer_options": {"adapters": None}, "base_model": "smollm2-135m"}}, "'adapters' is set by the run"),
    ({"rec": {"encoder": "BAAI/bge-m4"}}, "key 'rec.encoder': text encoder 'BAAI/bge-m4': BAAI/bge-m4 is not in the "
                                          "local Hugging Face cache; download it with `huggingface-cli download"),
    ({"rec": {"encoder": "minlm"}}, "key 'rec.encoder': text encoder 'minlm': not a known name"),
    ({"data": {"data_dir": "no/such/folder"}}, "key 'data':"),
])
def test_each_bad_name_is_reported_with_file_and_key(tmp_path, ml100k_dir, hub_cache, sections, expected):
    path = _config(tmp_path, ml100k_dir, **sections)
    try:
        lines = _problems(path)
    except ConfigError as err:  # some values are refused already by the config's own validation
        lines = str(err).splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{path}:") and expected in lines[0], lines


def test_connectors_and_adapter_folders(tmp_path, tiny_model_path):
    from reasonrec.checks import Checker

    checker = Checker("exp.yaml")
    checker.connector("rec.connector", "hybrid")
    checker.connector("rec.connector", "mlpp")
    checker.adapter("llm.options.adapters.actor", tmp_path)  # a folder, but no adapter in it
    checker.llm("llm.name", str(tiny_model_path), options={"adapters": {"reflect": str(tmp_path / "none")}})
    assert checker.problems == [
        "exp.yaml: key 'rec.connector': unknown connector 'mlpp'; did you mean 'mlp'? known: mlp, moe, hybrid",
        f"exp.yaml: key 'llm.options.adapters.actor': '{tmp_path}' is not a peft adapter folder (no "
        "adapter_config.json)",
        f"exp.yaml: key 'llm.options.adapters.reflect': '{tmp_path / 'none'}' is not a peft adapter folder (no "
        "adapter_config.json)",
    ]
    with pytest.raises(ConfigError, match=r"^exp.yaml: key 'rec.connector'"):
        checker.raise_if_any()


@pytest.mark.parametrize(("sections", "key"), [({"subset": {"users": -5}}, "subset.users"),
                                               ({"subset": {"items": 0}}, "subset.items"),
                                               ({"rec": {"backbones": []}}, "rec.backbones")])
def test_value_ranges_are_refused_at_load(tmp_path, ml100k_dir, sections, key):
    path = _config(tmp_path, ml100k_dir, **sections)
    with pytest.raises(ConfigError, match=rf"^{path}: key '{key}':"):
        load_experiment(path)


def test_a_run_with_a_bad_backbone_stops_before_any_stage(tmp_path, ml100k_dir, hub_cache):
    path = _config(tmp_path, ml100k_dir, rec={"backbones": ["dinn"]})
    with pytest.raises(ConfigError, match="unknown CTR backbone 'dinn'"):
        run_experiment(path)
    assert not (tmp_path / "run" / "data").exists() and not (tmp_path / "run" / "config.yaml").exists()


def test_dry_run_of_the_gpu_config_names_only_what_is_missing(hub_cache, ml1m_dir_or_none):
    """configs/r4ec/ml1m-qwen7b.yaml on a machine without the weights: the base model and the encoder are named
    with their download commands; the teacher endpoint (a server started later) and the backbones are not.
    Whatever else a machine lacks (vLLM, ratings.dat) may be named too, each on its own key."""
    path = REPO / "configs" / "r4ec" / "ml1m-qwen7b.yaml"
    lines = _problems(path, data_dir=ml1m_dir_or_none)
    by_key = {line.split("key '")[1].split("'")[0]: line for line in lines}
    assert "`huggingface-cli download Qwen/Qwen2.5-7B-Instruct`" in by_key["train.base_model"]
    assert "`huggingface-cli download BAAI/bge-m3`" in by_key["rec.encoder"]
    assert set(by_key) <= {"train.base_model", "rec.encoder", "train.infer_backend", "data"}, lines
    if "train.infer_backend" in by_key:
        assert "'vllm' package, which is not installed" in by_key["train.infer_backend"]
    if "data" in by_key:  # the shared ML-1M copy lacks ratings.dat
        assert "MovieLens-1M not found" in by_key["data"] and "ratings.dat" in by_key["data"]


def test_dry_run_of_the_starec_gpu_config_names_only_the_missing_weights(hub_cache, ml1m_dir_or_none):
    """configs/starec/ml1m-qwen7b.yaml without the weights: only the agent's base model is named (with its download
    command); the teacher endpoint is a server started later; a data problem is named on its own key."""
    lines = _problems(REPO / "configs" / "starec" / "ml1m-qwen7b.yaml", data_dir=ml1m_dir_or_none)
    by_key = {line.split("key '")[1].split("'")[0]: line for line in lines}
    assert "`huggingface-cli download Qwen/Qwen2.5-7B-Instruct`" in by_key["model.name"]
    assert set(by_key) <= {"model.name", "data"}, lines


@pytest.fixture
def ml1m_dir_or_none(shared_data):
    d = shared_data / "ml-1m"
    return d if d.exists() else None


def test_hub_encoder_ids_load_from_the_local_cache(hub_cache):
    from reasonrec.knowledge.encoders import load_encoder, resolve_encoder
    from reasonrec.llm.bundled import minilm_dir

    with pytest.raises(BackendError, match=r"`huggingface-cli download BAAI/bge-m3`"):
        resolve_encoder("BAAI/bge-m3")
    # all-MiniLM-L6-v2 is what the sentence-transformers hub id names; the bundled copy is those very files
    snapshot = _cache_model(hub_cache, "sentence-transformers/all-MiniLM-L6-v2", minilm_dir())
    by_id = load_encoder("sentence-transformers/all-MiniLM-L6-v2")
    assert by_id.path == snapshot and by_id.pooling is None  # a sentence-transformers folder keeps its own pooling
    texts = ["A heist film set in Los Angeles.", "A children's animated musical."]
    np.testing.assert_allclose(by_id.encode(texts), load_encoder("minilm").encode(texts), atol=1e-5)
    # BGE-M3's dense vector is its [CLS] state (model card): a cached BAAI/bge-m3 resolves with CLS pooling
    _cache_model(hub_cache, "BAAI/bge-m3", minilm_dir())
    assert resolve_encoder("BAAI/bge-m3")[1] == "cls" and resolve_encoder("bge-m3")[1] == "cls"
    assert resolve_encoder("BAAI/bge-m3:mean")[1] == "mean"


def _main(monkeypatch, capsys, *argv: str) -> tuple[int, str, str]:
    """``reasonrec ARGV`` through the real entry point (its error handling included), in this process."""
    from reasonrec.cli import main

    monkeypatch.setattr(sys, "argv", ["reasonrec", *argv])
    with pytest.raises(SystemExit) as exit_:
        main()
    out = capsys.readouterr()
    return exit_.value.code or 0, out.out, out.err


def test_dry_run_cli(tmp_path, ml100k_dir, monkeypatch, capsys):
    ok = _config(tmp_path, ml100k_dir)
    code, out, err = _main(monkeypatch, capsys, "run", str(ok), "--dry-run")
    assert code == 0 and "ok" in out, err
    assert not (tmp_path / "run").exists()  # a dry run writes nothing
    bad = _config(tmp_path, ml100k_dir, rec={"backbones": ["dinn"]}, teacher={"name": "smollm-135m"})
    res = subprocess.run([sys.executable, "-m", "reasonrec", "run", str(bad), "--dry-run"], env=ENV,
                         capture_output=True, text=True, timeout=300)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 2, res.stderr[-2000:]
    assert "key 'teacher.name'" in lines[0] and "key 'rec.backbones[0]'" in lines[1]


def test_a_bad_flag_is_one_line_from_the_command(ml100k_dir):
    res = subprocess.run([sys.executable, "-m", "reasonrec", "rec", "train", "--data-dir", str(ml100k_dir),
                          "--epochs", "-1"], env=ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stderr[-3000:]
    assert res.stderr.strip() == "error: --epochs: input should be greater than or equal to 1 (got -1)"


@pytest.mark.parametrize(("flags", "expected"), [
    (["--epochs", "0"], "--epochs: input should be greater than or equal to 1 (got 0)"),
    (["--lr", "0"], "--lr: input should be greater than 0 (got 0.0)"),
    (["--batch-size=0"], "--batch-size: input should be greater than or equal to 1 (got 0)"),
    (["--embedding-dim", "8", "--connector", "moee"], "--connector: input should be 'mlp', 'moe' or 'hybrid'"),
])
def test_a_bad_flag_is_one_line(ml100k_dir, monkeypatch, capsys, flags, expected):
    code, _, err = _main(monkeypatch, capsys, "rec", "train", "--data-dir", str(ml100k_dir), *flags)
    assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith(f"error: {expected}"), err
