"""Mixed Yes/No trainer (ThinkRec Eq. 4-7; TALLRec, CoLLM): BCE on the Yes logit + LM loss on the answer.

Each sample is a prompt and an answer that starts with "Yes" or "No" (label samples: just that word; reasoning
samples: the word and a reason). The loss per example is

    w_bce(kind) · BCE(score, label) + w_lm(kind) · CE(answer tokens)                       (ThinkRec Eq. 7)

where ``score`` is logit(Yes) − logit(No) (or the raw Yes logit, as ThinkRec's code) at the position that predicts
the first answer token, and the weights are (0.1, 0.9) for reasoning and (0.9, 0.1) for label samples (ThinkRec's
``loss_alpha/beta/theta/gamma``). Reasoning and label data are mixed 0.2 : 0.8 (:func:`mix_kinds`).

Optional soft tokens (CoLLM / ThinkRec): each placeholder token in the prompt has its input embedding replaced by
a projected vector, ``MLP(v) = W2·ReLU(W1·v)`` (ThinkRec ``llama_proj``), with the LoRA frozen while the projector
trains (ThinkRec's last stage) unless ``soft_token.train_lora``.

Why our own trainer: trl has no classification-at-a-token loss. It is a ``transformers.Trainer`` with a
``compute_loss`` that calls the plain functions in :mod:`reasonrec.train.losses`. Batches are left-padded, so every
answer ends at the last position and only the last ``max answer length + 1`` positions get logits
(``logits_to_keep``) — the (B, T, V) logits of long prompts are never built.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import Trainer

from ..errors import ConfigError, DataError
from .common import (
    TrainResult,
    encode_pair,
    fit_length,
    is_complete,
    load_peft_model,
    load_tokenizer,
    precision_plan,
    read_table,
    run_training,
    skipped_result,
    training_kwargs,
)
from .config import YesNoConfig
from .losses import answer_lm_loss, mixed_yes_no_loss, yes_no_bce_loss

REASON, LABEL = 0, 1
PROJECTOR_FILE = "soft_projector.pt"


def single_token(tokenizer, text: str, field: str) -> int:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ConfigError(f"{field}: '{text}' is {len(ids)} tokens for this tokenizer ({ids}); it must be one token")
    return ids[0]


def mix_kinds(records: list[dict], reason_share: float | None, seed: int) -> list[dict]:
    """ThinkRec's mixed sampling: keep every label sample and draw reasoning samples so they make up
    ``reason_share`` of the result (with replacement when there are too few; a seeded subsample when too many).
    Returns the records unchanged when the share is None or only one kind is present."""
    reason = [r for r in records if r["kind"] == REASON]
    label = [r for r in records if r["kind"] == LABEL]
    if reason_share is None or not reason or not label:
        return records
    rng = random.Random(seed)
    want = round(len(label) * reason_share / (1 - reason_share))
    drawn = rng.sample(reason, want) if want <= len(reason) else [rng.choice(reason) for _ in range(want)]
    mixed = label + drawn
    rng.shuffle(mixed)
    return mixed


def yesno_records(df, cfg: YesNoConfig, tokenizer) -> list[dict]:
    yes_id = single_token(tokenizer, cfg.yes_token, "yes_token")
    no_id = single_token(tokenizer, cfg.no_token, "no_token")
    placeholder_id = None
    if cfg.soft_token is not None:
        ph = cfg.soft_token.placeholder or tokenizer.unk_token
        if ph is None:
            raise ConfigError("soft_token.placeholder: the tokenizer has no unk token; name a placeholder token")
        placeholder_id = single_token(tokenizer, ph, "soft_token.placeholder")
    out = []
    for i, row in enumerate(df.to_dict("records")):
        where = f"{cfg.data.train}: row {i}"
        label = int(row[cfg.label_column])
        if label not in (0, 1):
            raise DataError(f"{where}: column '{cfg.label_column}' must be 0 or 1, got {row[cfg.label_column]!r}")
        word = cfg.yes_token if label else cfg.no_token
        answer = row.get(cfg.answer_column)
        answer = word if answer is None or (isinstance(answer, float)) or not str(answer).strip() else str(answer)
        kind = row.get(cfg.kind_column)
        if kind is None or isinstance(kind, float):
            kind = "label" if answer.strip() == word else "reason"
        if kind not in ("reason", "label"):
            raise DataError(f"{where}: column '{cfg.kind_column}' must be 'reason' or 'label', got {kind!r}")
        prompt_ids, (answer_ids,) = encode_pair(tokenizer, str(row[cfg.prompt_column]), [answer],
                                                chat=cfg.chat_template)
        if not answer_ids or answer_ids[0] not in (yes_id, no_id):
            raise DataError(f"{where}: the answer must start with '{cfg.yes_token}' or '{cfg.no_token}' as its own "
                            f"token; got {answer[:40]!r}")
        if answer_ids[0] != (yes_id if label else no_id):
            raise DataError(f"{where}: label {label} but the answer starts with {answer.split()[0]!r}")
        prompt_ids, (answer_ids,) = fit_length(prompt_ids, [answer_ids], cfg.training.max_length)
        rec = {"prompt_ids": prompt_ids, "answer_ids": answer_ids, "label": label,
               "kind": REASON if kind == "reason" else LABEL}
        if placeholder_id is not None:
            vecs = row.get(cfg.soft_token.column)
            if vecs is None:
                raise DataError(f"{where}: soft tokens are on but column '{cfg.soft_token.column}' is missing")
            vecs = [list(map(float, v)) for v in vecs] if hasattr(vecs[0], "__len__") else [list(map(float, vecs))]
            n_ph = prompt_ids.count(placeholder_id)
            if n_ph != len(vecs):
                raise DataError(f"{where}: the prompt has {n_ph} placeholder token(s) but '{cfg.soft_token.column}' "
                                f"has {len(vecs)} vector(s)")
            rec["soft"] = vecs
        out.append(rec)
    return out


@dataclass
class YesNoCollator:
    """Left-pads prompt + answer so every answer ends at the last position.

    Returns ``input_ids``, ``attention_mask``, ``position_ids``, ``answer_mask`` (B, T), ``answer_len``, ``labels``,
    ``kind`` (B,) and, with soft tokens, ``soft`` (P, D): the vectors of all placeholders in row-major order.
    """

    pad_token_id: int

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        seqs = [ex["prompt_ids"] + ex["answer_ids"] for ex in examples]
        width = max(len(s) for s in seqs)
        b = len(seqs)
        input_ids = torch.full((b, width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((b, width), dtype=torch.long)
        answer_mask = torch.zeros((b, width), dtype=torch.long)
        for i, (s, ex) in enumerate(zip(seqs, examples, strict=True)):
            input_ids[i, width - len(s):] = torch.tensor(s)
            attention_mask[i, width - len(s):] = 1
            answer_mask[i, width - len(ex["answer_ids"]):] = 1
        batch = {
            "input_ids": input_ids, "attention_mask": attention_mask,
            # Left padding: positions must count real tokens only, as in generation.
            "position_ids": (attention_mask.cumsum(-1) - 1).clamp(min=0),
            "answer_mask": answer_mask,
            "answer_len": torch.tensor([len(ex["answer_ids"]) for ex in examples]),
            "labels_yn": torch.tensor([ex["label"] for ex in examples]),
            "kind": torch.tensor([ex["kind"] for ex in examples]),
        }
        if "soft" in examples[0]:
            batch["soft"] = torch.tensor([v for ex in examples for v in ex["soft"]], dtype=torch.float32)
        return batch


def make_projector(in_dim: int, hidden_size: int, hidden_mult: int) -> nn.Module:
    """ThinkRec / CoLLM ``llama_proj``: Linear(d, d·mult) → ReLU → Linear(d·mult, H)."""
    return nn.Sequential(nn.Linear(in_dim, in_dim * hidden_mult), nn.ReLU(), nn.Linear(in_dim * hidden_mult, hidden_size))


class YesNoTrainer(Trainer):
    """``transformers.Trainer`` computing ThinkRec's mixed BCE + LM loss (Eq. 7)."""

    # compute_loss returns a per-example mean, so the Trainer must divide it by the accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(self, *args, yes_id: int, no_id: int, score: str, reason_weights, label_weights,
                 placeholder_id: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.yes_id, self.no_id, self.score = yes_id, no_id, score
        self.weights = torch.tensor([list(reason_weights), list(label_weights)], dtype=torch.float32)  # (2, 2)
        self.placeholder_id = placeholder_id
        self._metrics: dict[str, list[float]] = defaultdict(list)

    def input_embeds(self, model, inputs) -> torch.Tensor:
        """Token embeddings with each placeholder's row replaced by the projected soft vector."""
        emb = model.get_input_embeddings()(inputs["input_ids"])                     # (B, T, H)
        proj = self.accelerator.unwrap_model(model).soft_projector(inputs["soft"]).to(emb.dtype)  # (P, H)
        where = (inputs["input_ids"] == self.placeholder_id).unsqueeze(-1).expand_as(emb)
        return emb.masked_scatter(where, proj)

    def forward_scores(self, model, inputs):
        """(yes_logits, no_logits, kept_logits, keep): logits at the first answer position and the tail logits."""
        keep = int(inputs["answer_len"].max()) + 1
        kw = dict(attention_mask=inputs["attention_mask"], position_ids=inputs["position_ids"], use_cache=False,
                  logits_to_keep=keep)
        if self.placeholder_id is not None:
            out = model(inputs_embeds=self.input_embeds(model, inputs), **kw)
        else:
            out = model(input_ids=inputs["input_ids"], **kw)
        logits = out.logits                                                        # (B, keep, V)
        rows = torch.arange(logits.size(0), device=logits.device)
        first = keep - inputs["answer_len"] - 1                                     # predicts the first answer token
        at = logits[rows, first]                                                    # (B, V)
        return at[:, self.yes_id], at[:, self.no_id], logits, keep

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        yes, no, logits, keep = self.forward_scores(model, inputs)
        bce = yes_no_bce_loss(yes, no if self.score == "yes_vs_no" else None, inputs["labels_yn"])
        lm = answer_lm_loss(logits, inputs["input_ids"][:, -keep:], inputs["answer_mask"][:, -keep:])
        w = self.weights.to(bce.device)[inputs["kind"]]                             # (B, 2)
        loss = mixed_yes_no_loss(bce, lm, w[:, 0], w[:, 1])
        with torch.no_grad():
            score = yes - no if self.score == "yes_vs_no" else yes
            self._metrics["loss/bce"].append(bce.mean().item())
            self._metrics["loss/lm"].append(lm.mean().item())
            self._metrics["yesno/accuracy"].append(((score > 0).long() == inputs["labels_yn"]).float().mean().item())
        return (loss, {"score": score}) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        logs.update({k: sum(v) / len(v) for k, v in self._metrics.items() if v})
        self._metrics.clear()
        super().log(logs, start_time)

    # The projector is not part of the peft adapter: save and restore it beside it.
    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        super()._save(output_dir, state_dict)
        if self.placeholder_id is not None:
            save_projector(self.accelerator.unwrap_model(self.model), Path(output_dir or self.args.output_dir))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        if self.placeholder_id is not None:
            load_projector(self.accelerator.unwrap_model(model or self.model), Path(resume_from_checkpoint))


def save_projector(model, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    proj = model.soft_projector
    torch.save(proj.state_dict(), folder / PROJECTOR_FILE)
    meta = {"in_dim": proj[0].in_features, "hidden_mult": proj[0].out_features // proj[0].in_features,
            "hidden_size": proj[2].out_features}
    (folder / "soft_projector.json").write_text(json.dumps(meta))


def load_projector(model, folder: Path) -> None:
    path = folder / PROJECTOR_FILE
    if not path.exists():
        raise DataError(f"{folder}: no {PROJECTOR_FILE}; the checkpoint was not written by a soft-token run")
    model.soft_projector.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))


def build_yesno_trainer(cfg: YesNoConfig, df=None, callbacks: Sequence = ()):
    from datasets import Dataset
    from transformers import TrainingArguments, set_seed

    cols = [cfg.prompt_column, cfg.label_column]
    if df is None:
        df = read_table(cfg.data.train, cols, cfg.data.limit)
    set_seed(cfg.training.seed)
    tokenizer = load_tokenizer(cfg.model.name)
    records = mix_kinds(yesno_records(df, cfg, tokenizer), cfg.reason_share, cfg.training.seed)
    model = load_peft_model(cfg.model, dtype=precision_plan(cfg.training, "train:yesno").weights_dtype)
    placeholder_id = None
    if cfg.soft_token is not None:
        placeholder_id = single_token(tokenizer, cfg.soft_token.placeholder or tokenizer.unk_token,
                                      "soft_token.placeholder")
        in_dim = len(records[0]["soft"][0])
        model.add_module("soft_projector", make_projector(in_dim, model.config.hidden_size,
                                                          cfg.soft_token.hidden_mult))
        if not cfg.soft_token.train_lora:  # ThinkRec staged training: the LoRA stays fixed
            for name, p in model.named_parameters():
                if "lora_" in name:
                    p.requires_grad_(False)
    args = TrainingArguments(**training_kwargs(cfg.training), remove_unused_columns=False)
    trainer = YesNoTrainer(
        model=model, args=args, train_dataset=Dataset.from_list(records), processing_class=tokenizer,
        data_collator=YesNoCollator(tokenizer.pad_token_id), callbacks=list(callbacks),
        yes_id=single_token(tokenizer, cfg.yes_token, "yes_token"),
        no_id=single_token(tokenizer, cfg.no_token, "no_token"), score=cfg.score,
        reason_weights=cfg.reason_weights, label_weights=cfg.label_weights, placeholder_id=placeholder_id,
    )
    return trainer, tokenizer


def train_yesno(cfg: YesNoConfig, df=None, callbacks: Sequence = ()) -> TrainResult:
    """Run (or resume, or skip if complete) the mixed Yes/No trainer; adapter (+ projector) in ``output_dir/adapter``."""
    if is_complete(cfg.training.output_dir):
        return skipped_result(cfg)
    trainer, tokenizer = build_yesno_trainer(cfg, df, callbacks)

    def save(folder: Path) -> None:
        model = trainer.accelerator.unwrap_model(trainer.model)
        model.save_pretrained(folder, selected_adapters=["default"])
        if cfg.soft_token is not None:
            save_projector(model, folder)

    return run_training(trainer, cfg, tokenizer=tokenizer, save_fn=save)
