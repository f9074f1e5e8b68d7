"""Configs, run directories and atomic writes: the behaviour every stage relies on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from reasonrec import io
from reasonrec.config import DataSection, Section, load_yaml
from reasonrec.errors import ConfigError
from reasonrec.runs import RunDir


class Inner(Section):
    learning_rate: float = 1e-3
    epochs: int = 1


class Outer(Section):
    name: str
    data: DataSection = DataSection()
    train: Inner = Inner()


def _yaml(tmp_path, text):
    p = tmp_path / "exp.yaml"
    p.write_text(textwrap.dedent(text))
    return p


def test_valid_config_loads_with_defaults(tmp_path):
    cfg = load_yaml(Outer, _yaml(tmp_path, """
        name: a
        train: {epochs: 3}
        data: {dataset: ml-100k, protocol: kar}
    """))
    assert cfg.train.epochs == 3 and cfg.train.learning_rate == 1e-3 and cfg.data.protocol == "kar"


def test_unknown_key_names_file_key_and_closest_match(tmp_path):
    p = _yaml(tmp_path, """
        name: a
        train: {learning_rat: 0.1}
    """)
    with pytest.raises(ConfigError) as err:
        load_yaml(Outer, p)
    msg = str(err.value)
    assert str(p) in msg and "train.learning_rat" in msg and "did you mean 'learning_rate'" in msg


def test_wrong_type_and_bad_literal_are_reported(tmp_path):
    with pytest.raises(ConfigError, match=r"train.epochs"):
        load_yaml(Outer, _yaml(tmp_path, "name: a\ntrain: {epochs: many}\n"))
    with pytest.raises(ConfigError, match=r"data.protocol"):
        load_yaml(Outer, _yaml(tmp_path, "name: a\ndata: {protocol: random}\n"))
    with pytest.raises(ConfigError, match="missing required key 'name'"):
        load_yaml(Outer, _yaml(tmp_path, "train: {}\n"))


def test_overrides_are_validated_too(tmp_path):
    p = _yaml(tmp_path, "name: a\n")
    assert load_yaml(Outer, p, {"train.epochs": 5}).train.epochs == 5
    with pytest.raises(ConfigError, match="train.epoch"):
        load_yaml(Outer, p, {"train.epoch": 5})


def test_stage_done_only_when_every_artifact_is_complete(tmp_path):
    run = RunDir(tmp_path / "run")
    with run.stage("gen") as st:
        assert not st.done
        io.write_json(st.path / "a.json", {"x": 1})
        st.complete(["a.json"])
    assert run.stage("gen").done
    # a truncated or missing artifact makes the stage incomplete again
    (run.root / "gen" / "a.json").write_text("{")
    assert not run.stage("gen").done
    (run.root / "gen" / "a.json").unlink()
    assert not run.stage("gen").done


def test_manifest_records_versions_and_checksums(tmp_path):
    run = RunDir(tmp_path / "run")
    run.write_config(Outer(name="x"))
    run.write_manifest({"u.data": "abc"})
    manifest = json.loads((run.root / "manifest.json").read_text())
    assert manifest["packages"]["torch"] and manifest["data_checksums"] == {"u.data": "abc"}
    assert "name: x" in (run.root / "config.yaml").read_text()


def test_atomic_write_leaves_old_file_when_writer_is_killed(tmp_path):
    target = tmp_path / "out.txt"
    io.write_text(target, "old")
    code = textwrap.dedent(f"""
        import os, signal
        from reasonrec import io
        with io.atomic_path({str(target)!r}) as tmp:
            open(tmp, "w").write("half")
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert proc.returncode != 0
    assert target.read_text() == "old"
    io.write_text(target, "new")
    assert target.read_text() == "new"


def test_cli_reports_config_errors_in_one_line(tmp_path):
    p = _yaml(tmp_path, "method: r4ecc\n")
    proc = subprocess.run([sys.executable, "-m", "reasonrec", "run", str(p)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "unknown method 'r4ecc'" in proc.stderr and "Traceback" not in proc.stderr
