"""Mixed Yes/No trainer (ThinkRec Eq. 4-7): BCE at the first answer position, learns, soft tokens, resume."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from reasonrec.errors import DataError
from reasonrec.train.common import adapter_weights, stop_after_steps
from reasonrec.train.config import YesNoConfig
from reasonrec.train.yesno import build_yesno_trainer, train_yesno


def _rows(n=8, soft=False):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        label = i % 2
        rows.append({"prompt": f"User <|endoftext|> rated item {i}. Will they like item {i + 1}?", "label": label,
                     "answer": None, "soft_emb": rng.normal(size=6).tolist()})
    rows.append({"prompt": "User <|endoftext|> loved Alien. Will they like Heat?", "label": 1,
                 "answer": "Yes. They like tense thrillers.", "soft_emb": rng.normal(size=6).tolist()})
    df = pd.DataFrame(rows)
    return df if soft else df.drop(columns=["soft_emb"])


def _cfg(tiny, out, soft=None, **training):
    return YesNoConfig.model_validate({
        "model": {"name": str(tiny), "lora": {"targets": "all-linear"}}, "data": {"train": "unused.jsonl"},
        "soft_token": soft,
        "training": {"output_dir": str(out), "max_steps": 4, "learning_rate": 2e-2, "logging_steps": 1,
                     "save_steps": 2, "per_device_train_batch_size": 4, **training}})


def _eval(trainer):
    """(mean BCE over the data, yes/no scores) in eval mode, one batch."""
    trainer.model.eval()
    batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i]
                                                           for i in range(len(trainer.train_dataset))]))
    with torch.no_grad():
        yes, no, _, _ = trainer.forward_scores(trainer.model, batch)
    score = yes - no
    bce = torch.nn.functional.binary_cross_entropy_with_logits(score, batch["labels_yn"].float())
    return float(bce), score, batch


def test_bce_reads_the_position_before_the_first_answer_token(tiny_model_path, tmp_path):
    # fp32: compared with a hand computation to 1e-4 (bf16 logits are ~2e-3 off)
    trainer, tok = build_yesno_trainer(_cfg(tiny_model_path, tmp_path, precision="fp32"), _rows())
    _, score, batch = _eval(trainer)
    # reference: right-padded, unbatched forward of each prompt; the score is read at the last prompt token
    yes_id, no_id = tok.convert_tokens_to_ids("Yes"), tok.convert_tokens_to_ids("No")
    for b in range(len(score)):
        ex = trainer.train_dataset[b]
        with torch.no_grad():
            logits = trainer.model(input_ids=torch.tensor([ex["prompt_ids"]])).logits[0, -1]
        assert float(logits[yes_id] - logits[no_id]) == pytest.approx(float(score[b]), abs=1e-4)
        assert ex["answer_ids"][0] == (yes_id if ex["label"] else no_id)
    kinds = [trainer.train_dataset[i]["kind"] for i in range(len(trainer.train_dataset))]
    assert kinds.count(0) == 2 and kinds.count(1) == 8  # 0.2 : 0.8 mix (8 label rows → 2 reasoning draws)


def test_overfitting_lowers_the_bce(tiny_model_path, tmp_path):
    # A random 64-wide model has tiny logits and cannot tell these prompts apart in a few steps; what it can and
    # must do is move the Yes-vs-No score towards the labels (here 6 of 10 mixed samples are "Yes").
    trainer, _ = build_yesno_trainer(_cfg(tiny_model_path, tmp_path, max_steps=12, save_steps=100,
                                          learning_rate=5e-2), _rows())
    before, _, _ = _eval(trainer)
    trainer.train()
    after, score, batch = _eval(trainer)
    assert after < before - 0.02
    assert float(score.mean()) > 0  # moved towards the majority label


def test_soft_tokens_train_the_projector_with_lora_frozen_and_resume_exactly(tiny_model_path, tmp_path):
    soft = {"column": "soft_emb", "hidden_mult": 2}
    df = _rows(soft=True)
    trainer, _ = build_yesno_trainer(_cfg(tiny_model_path, tmp_path / "probe", soft), df)
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("soft_projector") for n in trainable)

    full = train_yesno(_cfg(tiny_model_path, tmp_path / "full", soft), df)
    part_cfg = _cfg(tiny_model_path, tmp_path / "part", soft)
    train_yesno(part_cfg, df, callbacks=[stop_after_steps(2)])
    part = train_yesno(part_cfg, df)
    pa = torch.load(full.adapter_dir / "soft_projector.pt")
    pb = torch.load(part.adapter_dir / "soft_projector.pt")
    for k in pa:
        torch.testing.assert_close(pa[k], pb[k], atol=0, rtol=0)
    init = {k: v for k, v in trainer.model.soft_projector.state_dict().items()}
    assert any(not torch.equal(init[k], pa[k]) for k in pa)  # the projector moved
    lora = adapter_weights(full.adapter_dir)
    assert all(float(v.abs().sum()) == 0 for k, v in lora.items() if "lora_B" in k)  # the LoRA did not


def test_answer_must_agree_with_the_label(tiny_model_path, tmp_path):
    df = _rows()
    df.loc[0, "answer"] = "Yes, definitely."  # row 0 has label 0
    with pytest.raises(DataError, match="label 0 but the answer starts with 'Yes,'"):
        build_yesno_trainer(_cfg(tiny_model_path, tmp_path), df)
