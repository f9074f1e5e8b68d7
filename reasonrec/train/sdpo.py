"""Softmax-DPO: one chosen and K rejected completions per prompt (TrackRec Eq. 4; S-DPO, Chen et al. 2024).

trl has no multi-negative DPO, so this is a small ``transformers.Trainer`` that reuses trl's machinery:

- tokenisation splits prompt / completion as trl's DPO trainer does (:func:`~reasonrec.train.common.encode_pair`);
- the chosen and all rejected completions of a batch share one forward pass, and sequence log-probs come from
  the LM head on the completion positions only (:func:`~reasonrec.train.lean.lean_token_logps`; with
  ``training.lean_logits: false``, trl's fused LM head ``add_fused_lm_head``, which off CUDA / XPU scores every
  prompt position too), masked to the completion and summed;
- the reference is the same model with the adapter disabled (or the frozen ``ref`` copy of ``init_adapter``),
  under ``no_grad`` — trl's ``use_adapter``;
- the loss is :func:`reasonrec.train.losses.sdpo_loss`, which with K = 1 equals trl's DPO sigmoid loss.

With ``share_prompt`` (default) each prompt runs once and its KV cache is copied to its 1 + K completions
(:meth:`SDPOTrainer._row_logps_shared`); the loss equals the full-sequence pass (tested against trl, both ways).

Logged like trl's DPO: ``rewards/chosen``, ``rewards/rejected`` (mean β·log-ratio), ``rewards/margins`` (chosen minus
mean rejected) and ``rewards/accuracies`` (share of prompts whose chosen beats every rejected completion).

Data: rows with ``prompt`` (str), ``chosen`` (str) and ``rejected`` (list of K strings, or one string).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import Trainer

from ..errors import DataError
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
from .config import SDPOConfig
from .lean import lean_token_logps, supports_lean
from .losses import sdpo_loss


def sdpo_records(df, cfg: SDPOConfig, tokenizer) -> list[dict]:
    """Rows → ``{prompt_ids, chosen_ids, rejected_ids: list[list[int]]}``."""
    out = []
    for i, row in enumerate(df.to_dict("records")):
        rejected = row[cfg.rejected_column]
        if isinstance(rejected, str):
            rejected = [rejected]
        rejected = [str(r) for r in list(rejected)]
        if not rejected:
            raise DataError(f"{cfg.data.train}: row {i}: column '{cfg.rejected_column}' is empty; S-DPO needs ≥ 1 "
                            f"rejected completion per prompt")
        prompt_ids, comps = encode_pair(tokenizer, str(row[cfg.prompt_column]),
                                        [str(row[cfg.chosen_column]), *rejected], chat=cfg.chat_template)
        prompt_ids, comps = fit_length(prompt_ids, comps, cfg.training.max_length)
        out.append({"prompt_ids": prompt_ids, "chosen_ids": comps[0], "rejected_ids": comps[1:]})
    return out


@dataclass
class MultiNegativeCollator:
    """Pads B prompts × (1 + K_b) completions into one batch: rows [chosen_1..chosen_B, rejected of prompt 1, ...].

    Returns ``input_ids``, ``attention_mask``, ``completion_mask`` (N, T) with N = B + Σ K_b (right padding) and
    ``n_rejected`` (B,).
    """

    pad_token_id: int
    share_prompt: bool = False

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        seqs, masks = [], []
        for ex in examples:
            seqs.append(ex["prompt_ids"] + ex["chosen_ids"])
            masks.append([0] * len(ex["prompt_ids"]) + [1] * len(ex["chosen_ids"]))
        for ex in examples:
            for rej in ex["rejected_ids"]:
                seqs.append(ex["prompt_ids"] + rej)
                masks.append([0] * len(ex["prompt_ids"]) + [1] * len(rej))
        width = max(len(s) for s in seqs)
        input_ids = torch.full((len(seqs), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(seqs), width), dtype=torch.long)
        completion_mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, (s, m) in enumerate(zip(seqs, masks, strict=True)):
            input_ids[i, : len(s)] = torch.tensor(s)
            attention_mask[i, : len(s)] = 1
            completion_mask[i, : len(m)] = torch.tensor(m)
        n_rejected = torch.tensor([len(ex["rejected_ids"]) for ex in examples])
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "completion_mask": completion_mask,
                 "n_rejected": n_rejected}
        if self.share_prompt:
            batch.update(self._shared(examples))
        return batch

    def _shared(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        """Prompts once (left-padded, (B, P)) and completions alone (right-padded, (N, C)), rows in the same
        order as above; ``row_prompt`` (N,) is each row's prompt."""
        p_width = max(len(ex["prompt_ids"]) for ex in examples)
        b = len(examples)
        prompt_ids = torch.full((b, p_width), self.pad_token_id, dtype=torch.long)
        prompt_mask = torch.zeros((b, p_width), dtype=torch.long)
        for i, ex in enumerate(examples):
            n = len(ex["prompt_ids"])
            prompt_ids[i, p_width - n:] = torch.tensor(ex["prompt_ids"])
            prompt_mask[i, p_width - n:] = 1
        comps = [ex["chosen_ids"] for ex in examples]
        rows = list(range(b))
        for i, ex in enumerate(examples):
            comps += ex["rejected_ids"]
            rows += [i] * len(ex["rejected_ids"])
        c_width = max(len(c) for c in comps)
        comp_ids = torch.full((len(comps), c_width), self.pad_token_id, dtype=torch.long)
        comp_mask = torch.zeros((len(comps), c_width), dtype=torch.long)
        for i, c in enumerate(comps):
            comp_ids[i, : len(c)] = torch.tensor(c)
            comp_mask[i, : len(c)] = 1
        return {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "comp_ids": comp_ids, "comp_mask": comp_mask,
                "row_prompt": torch.tensor(rows)}


def _split(logps: torch.Tensor, n_rejected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(N,) row log-probs → chosen (B,), rejected (B, Kmax) and its mask (B, Kmax)."""
    b = n_rejected.numel()
    k_max = int(n_rejected.max())
    chosen = logps[:b]
    mask = torch.arange(k_max, device=logps.device).unsqueeze(0) < n_rejected.to(logps.device).unsqueeze(1)
    rejected = logps.new_zeros((b, k_max)).masked_scatter(mask, logps[b:])
    return chosen, rejected, mask


class SDPOTrainer(Trainer):
    """A ``transformers.Trainer`` whose loss is softmax-DPO (TrackRec Eq. 4) over one chosen + K rejected."""

    # compute_loss returns a per-prompt mean, so the Trainer must divide it by the accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(self, *args, beta: float = 0.1, share_prompt: bool = False, lean: bool = True, **kwargs):
        from trl.trainer.utils import add_fused_lm_head

        super().__init__(*args, **kwargs)
        self.beta = beta
        self.share_prompt = share_prompt
        self.lean = lean
        add_fused_lm_head(self.model.get_base_model())
        self._metrics: dict[str, list[float]] = defaultdict(list)

    def _row_logps(self, model, inputs) -> torch.Tensor:
        if self.share_prompt:
            return self._row_logps_shared(model, inputs)
        labels = inputs["input_ids"].masked_fill(inputs["completion_mask"] == 0, -100)
        if self.lean:
            # the head on completion positions only: trl's fused head scores every position off CUDA / XPU
            token_logps, _, _ = lean_token_logps(model, inputs["input_ids"], inputs["attention_mask"], labels)
            return token_logps.sum(dim=1)
        out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], labels=labels,
                    use_cache=False, fused_lm_head=True)
        return out.log_probs.sum(dim=1)  # (N,) zero outside the completion

    def _row_logps_shared(self, model, inputs) -> torch.Tensor:
        """The same (N,) log-probs, with each prompt run once: its KV cache is copied to its 1 + K completions.

        Mathematically identical to the full-sequence pass (causal attention: prompt states do not depend on
        what follows); with prompts of ~500 tokens and completions of ~15, a step costs ≈ 1/(1 + K) of the
        compute. Gradients flow through the shared prompt states into the prompt's LoRA activations.
        """
        p_mask = inputs["prompt_mask"]
        out = model(input_ids=inputs["prompt_ids"], attention_mask=p_mask,
                    position_ids=(p_mask.cumsum(-1) - 1).clamp(min=0), use_cache=True, logits_to_keep=1)
        rows = inputs["row_prompt"]
        # Copy prompt states to their rows with a one-hot matmul rather than indexing: the backward of indexing
        # with repeated indices accumulates in a thread-dependent order on CPU, which breaks bit-exact resume.
        sel = torch.nn.functional.one_hot(rows, p_mask.shape[0]).to(out.logits.dtype)   # (N, B)
        cache = out.past_key_values
        for layer in cache.layers:
            layer.keys = torch.einsum("nb,b...->n...", sel.to(layer.keys.dtype), layer.keys)
            layer.values = torch.einsum("nb,b...->n...", sel.to(layer.values.dtype), layer.values)
        comp_ids, comp_mask = inputs["comp_ids"], inputs["comp_mask"]
        start = p_mask.sum(-1)[rows].unsqueeze(1)                                 # (N, 1) prompt lengths
        pos = start + torch.arange(comp_ids.shape[1], device=comp_ids.device).unsqueeze(0)
        comp_out = model(input_ids=comp_ids, attention_mask=torch.cat([p_mask[rows], comp_mask], dim=1),
                         position_ids=pos, past_key_values=cache, use_cache=True)
        # the last prompt position predicts completion token 0; completion position j predicts token j + 1
        first = torch.einsum("nb,btv->ntv", sel, out.logits)                      # (N, 1, V)
        logits = torch.cat([first, comp_out.logits[:, :-1]], dim=1).float()      # (N, C, V)
        token_logps = torch.log_softmax(logits, -1).gather(-1, comp_ids.unsqueeze(-1)).squeeze(-1)
        return (token_logps * comp_mask).sum(-1)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        from trl.trainer.utils import use_adapter

        logps = self._row_logps(model, inputs)
        peft_model = self.accelerator.unwrap_model(self.model)
        with torch.no_grad(), use_adapter(peft_model, "ref" if "ref" in peft_model.peft_config else None):
            ref_logps = self._row_logps(model, inputs)
        chosen, rejected, mask = _split(logps, inputs["n_rejected"])
        ref_chosen, ref_rejected, _ = _split(ref_logps, inputs["n_rejected"])
        loss, _ = sdpo_loss(chosen, rejected, ref_chosen, ref_rejected, self.beta, mask)

        with torch.no_grad():
            r_chosen = self.beta * (chosen - ref_chosen)                              # (B,)
            r_rejected = (self.beta * (rejected - ref_rejected)).masked_fill(~mask, 0)  # (B, K)
            mean_rejected = r_rejected.sum(1) / mask.sum(1)
            beats_all = (r_chosen.unsqueeze(1) > r_rejected).logical_or(~mask).all(1)
            self._metrics["rewards/chosen"].append(r_chosen.mean().item())
            self._metrics["rewards/rejected"].append(mean_rejected.mean().item())
            self._metrics["rewards/margins"].append((r_chosen - mean_rejected).mean().item())
            self._metrics["rewards/accuracies"].append(beats_all.float().mean().item())
            self._metrics["logps/chosen"].append(chosen.mean().item())
        return (loss, {"logps": logps}) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        logs.update({k: sum(v) / len(v) for k, v in self._metrics.items() if v})
        self._metrics.clear()
        super().log(logs, start_time)


def build_sdpo_trainer(cfg: SDPOConfig, df=None, callbacks: Sequence = ()):
    from datasets import Dataset
    from transformers import TrainingArguments, set_seed

    if df is None:
        df = read_table(cfg.data.train, [cfg.prompt_column, cfg.chosen_column, cfg.rejected_column], cfg.data.limit)
    set_seed(cfg.training.seed)
    tokenizer = load_tokenizer(cfg.model.name)
    plan = precision_plan(cfg.training, "train:sdpo")
    model = load_peft_model(cfg.model, with_ref=True, dtype=plan.weights_dtype)
    args = TrainingArguments(**training_kwargs(cfg.training), remove_unused_columns=False)
    dataset = Dataset.from_list(sdpo_records(df, cfg, tokenizer))
    trainer = SDPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                          data_collator=MultiNegativeCollator(tokenizer.pad_token_id, cfg.share_prompt),
                          callbacks=list(callbacks), beta=cfg.beta, share_prompt=cfg.share_prompt,
                          lean=cfg.training.lean_logits and supports_lean(model))
    return trainer, tokenizer


def train_sdpo(cfg: SDPOConfig, df=None, callbacks: Sequence = ()) -> TrainResult:
    """Run (or resume, or skip if complete) softmax-DPO; the adapter lands in ``output_dir/adapter``."""
    if is_complete(cfg.training.output_dir):
        return skipped_result(cfg)
    trainer, tokenizer = build_sdpo_trainer(cfg, df, callbacks)
    return run_training(trainer, cfg, tokenizer=tokenizer)
