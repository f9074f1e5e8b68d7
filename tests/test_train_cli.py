"""`reasonrec train ...` runs a trainer from a YAML config and a JSONL file, stops and resumes, and names bad keys."""

from __future__ import annotations

import json

import pandas as pd
from typer.testing import CliRunner

from reasonrec.cli import app


def test_train_sft_from_yaml_stop_resume_skip(tiny_model_path, tmp_path):
    data = tmp_path / "pairs.jsonl"
    pd.DataFrame({"prompt": ["Do you like Alien?", "Rate Heat."], "completion": ["Yes.", "Four stars."]}).to_json(
        data, orient="records", lines=True)
    cfg = tmp_path / "sft.yaml"
    cfg.write_text(f"model:\n  name: {tiny_model_path}\ndata:\n  train: {data}\ntraining:\n"
                   f"  output_dir: {tmp_path / 'run'}\n  max_steps: 4\n  save_steps: 2\n  logging_steps: 1\n"
                   f"  per_device_train_batch_size: 2\n")
    runner = CliRunner()
    r1 = runner.invoke(app, ["train", "sft", str(cfg), "--stop-after", "2"])
    assert r1.exit_code == 0, r1.output
    assert "stopped early" in r1.output and (tmp_path / "run" / "checkpoint-2").exists()
    r2 = runner.invoke(app, ["train", "sft", str(cfg)])
    assert r2.exit_code == 0 and "adapter saved" in r2.output, r2.output
    log = json.loads((tmp_path / "run" / "train_log.json").read_text())
    assert log["global_step"] == 4 and log["config"]["model"]["lora"]["r"] == 8
    assert (tmp_path / "run" / "adapter" / "adapter_config.json").exists()
    r3 = runner.invoke(app, ["train", "sft", str(cfg)])
    assert "already complete" in r3.output


def test_unknown_key_names_file_and_closest_key(tmp_path):
    from reasonrec.cli import main  # noqa: F401  (the entry point turns ReasonRecError into exit code 2)
    from reasonrec.config import load_yaml
    from reasonrec.errors import ConfigError
    from reasonrec.train.config import SDPOConfig

    cfg = tmp_path / "sdpo.yaml"
    cfg.write_text("bta: 0.2\ndata:\n  train: x.jsonl\ntraining:\n  output_dir: out\n")
    try:
        load_yaml(SDPOConfig, cfg)
    except ConfigError as err:
        assert "sdpo.yaml" in str(err) and "'bta'" in str(err) and "did you mean 'beta'" in str(err)
    else:
        raise AssertionError("no ConfigError")
