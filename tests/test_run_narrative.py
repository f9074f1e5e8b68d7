"""What a run tells the person who started it: progress bars that name their stage and step, warnings for every
fallback (said at the time, recorded in ``warnings.json``, shown by the summary and the report), and the
captioned summary table ``reasonrec run`` ends with."""

from __future__ import annotations

import io as stdio
import json

import _r4ec_teacher
import pytest
import yaml
from rich.console import Console
from test_r4ec_run import SMOKE
from test_report import _make_run, _rates, collm  # noqa: F401  (collm is a fixture)

from reasonrec import progress
from reasonrec.cli.results import print_run_summary
from reasonrec.eval.report import render_report
from reasonrec.llm.base import load_llm
from reasonrec.runs import RunDir


@pytest.fixture(autouse=True)
def _no_stage_left():
    yield
    progress.set_stage(None)


def test_progress_bar_names_the_stage_count_and_step(tmp_path, tiny_model_path, capsys):
    run = RunDir(tmp_path / "run", verbose=False, stages=["data", "construct", "infer"])
    run.stage("infer", depends={"x": 1})
    llm = load_llm(str(tiny_model_path), backend="transformers", cache=tmp_path / "cache.sqlite")
    with run.step("user refinement"), progress.step("reflect"):
        llm.generate(["Hello", "World"], max_new_tokens=2)
    err = capsys.readouterr().err
    assert "stage 3/3 infer · user refinement · reflect" in err
    assert "stage infer: running [3/3]" in (tmp_path / "run" / "log.txt").read_text()
    # outside a run's steps, the bar says what the call is
    progress.set_stage(None)
    llm.generate(["Another prompt"], max_new_tokens=2)
    assert "generate" in capsys.readouterr().err


def test_stage_labels_carry_a_whole_run_eta_from_the_stages_this_process_ran(tmp_path, monkeypatch):
    from reasonrec import runs

    clock = [1000.0]
    monkeypatch.setattr(runs.time, "time", lambda: clock[0])
    run = RunDir(tmp_path / "run", verbose=False, stages=["a", "b", "c"])
    run.stage_weights = {"a": 1, "b": 2, "c": 3}
    st = run.stage("a", depends={"x": 1})
    assert progress.describe() == "stage 1/3 a"  # nothing has run yet: no ETA
    clock[0] += 10
    st.complete([])
    run.stage("b", depends={"x": 1})  # 10 s for 1 unit; 2 + 3 units left
    assert progress.describe() == "stage 2/3 b · run 0:10 elapsed, ≈ 0:50 left"
    assert "stage b: running [2/3] · run 0:10 elapsed, ≈ 0:50 left" in (run.root / "log.txt").read_text()
    # a resumed run: the complete stage is skipped and weighs nothing in this process's rate
    clock[0] += 30
    resumed = RunDir(tmp_path / "run", verbose=False, stages=["a", "b", "c"])
    resumed.stage_weights = run.stage_weights
    resumed.stage("a", depends={"x": 1})
    st = resumed.stage("b", depends={"x": 1})
    assert progress.describe() == "stage 2/3 b"
    clock[0] += 40
    st.complete([])
    outer = resumed.stage("c", depends={"x": 1})  # 40 s for b's 2 units → 20 s a unit × c's 3
    assert progress.describe() == "stage 3/3 c · run 0:40 elapsed, ≈ 1:00 left"
    # a stage run inside another: once it completes, the bars are the outer stage's again
    resumed.stage("inner", depends={"x": 1}).complete([])
    assert progress.describe() == "stage 3/3 c"
    outer.complete([])


def test_trackrec_plans_the_stages_its_run_announces():
    from reasonrec.methods.trackrec import Config, planned_stages

    cfg = Config(run_dir="x", rounds=2, ablation_rounds=1)
    names = planned_stages(cfg)
    assert names[:3] == ["data", "samples", "distill"] and len(names) == len(set(names))
    assert names.index("trackrec/r1/feedback") < names.index("rectune/trackrec-V1") < names.index(
        "eval/trackrec-G2-trackrec-V2")
    # no_align's G stays G₀ (its CoTs are trackrec's round-0 ones), no_rectune's V stays the base
    assert "cots/no_align-G1" not in names and "eval/G0-no_align-V1" in names
    assert "eval/no_rectune-G1-base" in names and "eval/base-base" in names
    assert names[-4:] == ["eval/none-base", "rectune/tallrec", "train/tallrec", "eval/none-tallrec"]
    # every training is a stage, after the stage that writes its data; a CoT set before the stages that read it
    assert names.index("distill") < names.index("train/G0") < names.index("cots/G0") < names.index("eval/G0-base")
    assert names.index("trackrec/r1/feedback") < names.index("train/trackrec-G1") < names.index(
        "cots/trackrec-G1") < names.index("rectune/trackrec-V1") < names.index("train/trackrec-V1")


class MuteTeacher(_r4ec_teacher.HashTeacher):
    """A teacher that never writes the tagged format (what a random or too small model does)."""

    def generate(self, prompts, n=1, temperature=0.0, top_p=1.0, max_new_tokens=16, stop=None, seed=0,
                 adapter=None):
        from reasonrec.llm.base import Generation

        self.calls += len(prompts)
        return [Generation(texts=["I am not sure what to say."], completion_tokens=[7]) for _ in prompts]


def test_a_construction_that_keeps_nothing_is_a_warning_now_and_in_the_record(tmp_path, ml100k_dir, monkeypatch):
    from reasonrec.methods import load_experiment, r4ec
    from reasonrec.methods.common import prepare_splits

    teacher = _r4ec_teacher.install(MuteTeacher(), setattr=monkeypatch.setattr)
    cfg_d = yaml.safe_load(SMOKE.read_text())
    cfg_d.update(run_dir=str(tmp_path / "run"))
    cfg_d["data"]["data_dir"] = str(ml100k_dir)
    cfg_d["teacher"]["name"] = "hash-teacher"
    cfg_d["generation"]["prime"] = False
    path = tmp_path / "r4ec.yaml"
    path.write_text(yaml.safe_dump(cfg_d))
    _, cfg = load_experiment(path)
    run = RunDir(cfg.run_dir, verbose=True, stages=r4ec.STAGES)
    ctx = prepare_splits(cfg.data, run, subset=cfg.subset)
    branches = r4ec.stage_construct(cfg, run, ctx)
    adapters = r4ec.stage_train(cfg, run)
    assert teacher.calls > 0 and all(v is None for v in adapters.values())

    recs = json.loads((run.root / "warnings.json").read_text())
    by_stage = {}
    for r in recs:
        by_stage.setdefault(r["stage"], []).append(r["message"])
    n_users = branches["user"]["reason_unparsed"]
    assert n_users == len(ctx.cases("user", cfg.subset.construct_fraction)) > 0
    assert any(m.startswith(f"Algorithm 1 kept nothing on the user side: 0 of {n_users} cases") for m in
               by_stage["construct"])
    assert any(m.startswith("Algorithm 1 kept nothing on the item side") for m in by_stage["construct"])
    # the scripted teacher enforces no constraint: said, since the config left `constrain` to the backend
    assert any(m.startswith("constraints unenforced: teacher hash-teacher") for m in by_stage["construct"])
    # every adapter fell back to the base model, each said by name
    assert sorted(m.split()[1] for m in by_stage["train"]) == sorted(adapters)
    # said at the time, too: a warning line in the log
    log = (run.root / "log.txt").read_text()
    assert log.count("warning: ") == len(recs)

    # a rerun skips the complete stages and keeps their warnings; a rerun of a stage says its own again, once
    again = RunDir(cfg.run_dir, verbose=False, stages=r4ec.STAGES)
    r4ec.stage_construct(cfg, again, ctx)
    assert json.loads((run.root / "warnings.json").read_text()) == recs
    (run.root / "train" / "_SUCCESS.json").unlink()
    r4ec.stage_train(cfg, again)
    assert json.loads((run.root / "warnings.json").read_text()) == (
        [r for r in recs if r["stage"] != "train"] + [r for r in recs if r["stage"] == "train"])


def test_run_summary_is_a_captioned_table_with_the_warnings(collm, tmp_path):  # noqa: F811
    tables, splits = collm
    test = splits.test.reset_index(drop=True)
    item = _rates(splits.train, "item_id", test)
    user = _rates(splits.train, "user_id", test)
    root = _make_run(tmp_path / "pop", splits, tables, "pop", {"base": item, "user_rate": user})
    long = "adapter user_actor not trained: " + "no rows from Algorithm 1, " * 6 + "base model"
    RunDir(root, verbose=False).warn(long, stage="train")

    out = stdio.StringIO()
    print_run_summary(root, Console(file=out, width=120, color_system=None))
    text = out.getvalue()
    n_users = test["user_id"].nunique()
    assert f"{len(test)} test samples of {n_users} users" in text
    assert "pop · ml-100k · collm · auc" in text
    for variant in ("base", "user_rate"):
        assert f"│ {variant} " in text
    assert "Δ vs base" in text
    assert text.rstrip().splitlines()[-1] == f"warning: train: {long}"  # last, on one line however long
    # the report shows the same warning where its results are read
    page, md = render_report([root])
    assert f"warning: train: {long}" in page and "adapter user_actor" in md
