"""LoRA supervised fine-tuning on (prompt, completion) pairs with trl's ``SFTTrainer``.

The loss is on the completion tokens only (trl ``completion_only_loss``) and, with ``chat_template``, the pair is a
user / assistant chat rendered by the tokenizer's chat template (trl's conversational prompt-completion format).
Used by R4ec (actor, reflection), TrackRec (distillation, Rec-tuning) and STARec (SFT anchoring).
"""

from __future__ import annotations

from collections.abc import Sequence

from .common import (
    TrainResult,
    is_complete,
    load_peft_model,
    load_tokenizer,
    precision_plan,
    read_table,
    run_training,
    skipped_result,
    to_dataset,
    training_kwargs,
)
from .config import SFTConfig
from .lean import lean_lm_loss, supports_lean


def sft_records(df, cfg: SFTConfig) -> list[dict]:
    """Rows → trl prompt-completion records (conversational when ``cfg.chat_template``)."""
    out = []
    for row in df.to_dict("records"):
        prompt, completion = str(row[cfg.prompt_column]), str(row[cfg.completion_column])
        if cfg.chat_template:
            msgs = [{"role": "user", "content": prompt}]
            if cfg.system_column:
                msgs.insert(0, {"role": "system", "content": str(row[cfg.system_column])})
            out.append({"prompt": msgs, "completion": [{"role": "assistant", "content": completion}]})
        else:
            out.append({"prompt": prompt, "completion": completion})
    return out


def _lean_sft_trainer_class():
    """trl's ``SFTTrainer`` with :func:`~reasonrec.train.lean.lean_lm_loss` as its loss (defined lazily: trl is
    imported only when a trainer is built)."""
    from trl import SFTTrainer

    class LeanSFTTrainer(SFTTrainer):
        """The LM head runs on completion positions only (``training.lean_logits``); the loss is the same as
        trl's completion-only loss, and ``mean_token_accuracy`` is logged as trl does (its ``entropy`` metric
        needs the full logits and is dropped)."""

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss, stats = lean_lm_loss(model, inputs["input_ids"], inputs.get("attention_mask"), inputs["labels"],
                                       num_items_in_batch=num_items_in_batch)
            mode = "train" if model.training else "eval"
            n = stats["n_tokens"].clamp(min=1)
            self._metrics[mode]["mean_token_accuracy"].append((stats["n_correct"] / n).item())
            if mode == "train" and inputs.get("attention_mask") is not None:  # as trl counts them
                self._total_train_tokens += int(inputs["attention_mask"].sum())
            self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
            return (loss, {"loss": loss}) if return_outputs else loss

    return LeanSFTTrainer


def build_sft_trainer(cfg: SFTConfig, df=None, callbacks: Sequence = ()):
    """The configured trl ``SFTTrainer`` (not yet trained); ``df`` defaults to ``cfg.data.train``."""
    from datasets import Dataset
    from transformers import set_seed
    from trl import SFTConfig as TrlSFTConfig
    from trl import SFTTrainer

    cols = [cfg.prompt_column, cfg.completion_column] + ([cfg.system_column] if cfg.system_column else [])
    if df is None:
        df = read_table(cfg.data.train, cols, cfg.data.limit)
    set_seed(cfg.training.seed)  # LoRA A matrices are initialised randomly
    tokenizer = load_tokenizer(cfg.model.name)
    model = load_peft_model(cfg.model, dtype=precision_plan(cfg.training, "train:sft").weights_dtype)
    args = TrlSFTConfig(
        **training_kwargs(cfg.training), max_length=cfg.training.max_length, completion_only_loss=True,
        packing=False, dataset_num_proc=None, remove_unused_columns=True,
    )
    dataset = Dataset.from_list(sft_records(df, cfg))
    trainer_cls = _lean_sft_trainer_class() if cfg.training.lean_logits and supports_lean(model) else SFTTrainer
    return trainer_cls(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                      callbacks=list(callbacks)), tokenizer


def train_sft(cfg: SFTConfig, df=None, callbacks: Sequence = ()) -> TrainResult:
    """Run (or resume, or skip if complete) LoRA SFT; the adapter lands in ``cfg.training.output_dir/adapter``."""
    if is_complete(cfg.training.output_dir):
        return skipped_result(cfg)
    trainer, tokenizer = build_sft_trainer(cfg, df, callbacks)
    return run_training(trainer, cfg, tokenizer=tokenizer)


__all__ = ["train_sft", "build_sft_trainer", "sft_records", "to_dataset"]
