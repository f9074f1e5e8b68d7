"""GRPO with trl's ``GRPOTrainer`` and plain-Python reward functions (STARec §3.4).

Reward functions follow trl's convention: keyword arguments ``prompts``, ``completions`` and every dataset column
(one value per completion), ``**kwargs`` for the rest; they return one ``float`` (or ``None`` = not applicable) per
completion, and can be called and tested outside any trainer.

- :func:`rank_reward` — STARec's ranking reward: +1 if the held-out item is ranked first, +0.5 for ranks 2-5, 0 for
  6-10, −0.5 for 11-20, −1 below 20, when it is missing, or when the output cannot be parsed.
- :func:`memory_update_reward` — STARec's memory-update task: the completion is a new user memory; a follow-up
  ranking with that memory (a callable the method supplies, e.g. the current policy answering the ranking prompt)
  gives the target's rank, rewarded as above.
- :func:`yes_reward` — 1 when the answer's first word is "Yes": a trivially learnable reward for smoke tests.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .common import (
    TrainResult,
    chat_messages,
    is_complete,
    load_peft_model,
    load_tokenizer,
    precision_plan,
    read_table,
    run_training,
    skipped_result,
    training_kwargs,
)
from .config import GRPOConfig
from .lean import lean_completion_logps, supports_lean

_ITEM_LINE = re.compile(r"^\s*(?:\[?\d+[\].):]|[-*•])\s*(.+?)\s*$")
_WORD = re.compile(r"[A-Za-z]+")


def completion_text(completion: Any) -> str:
    """trl passes plain strings, or a list of chat messages in conversational mode."""
    if isinstance(completion, list):
        return "".join(str(m.get("content", "")) for m in completion if isinstance(m, dict))
    return str(completion)


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^0-9a-z]+", " ", text.lower()).split())


def parse_ranking(text: str) -> list[str]:
    """Item lines of a ranked list ("1. Title", "2) Title", "- Title"), in order; [] when there is none."""
    return [m.group(1) for line in text.splitlines() if (m := _ITEM_LINE.match(line))]


def target_rank(text: str, target: str) -> int | None:
    """1-based rank of ``target`` in the ranked list in ``text`` (case / punctuation insensitive), else None."""
    want = _norm(target)
    if not want:
        return None
    for i, item in enumerate(parse_ranking(text), start=1):
        got = _norm(item)
        if got and (got == want or want in got):
            return i
    return None


def rank_to_reward(rank: int | None) -> float:
    """STARec rank reward: 1 → +1, 2-5 → +0.5, 6-10 → 0, 11-20 → −0.5, otherwise / None → −1."""
    if rank is None or rank < 1:
        return -1.0
    if rank == 1:
        return 1.0
    if rank <= 5:
        return 0.5
    if rank <= 10:
        return 0.0
    if rank <= 20:
        return -0.5
    return -1.0


def rank_reward(completions: Sequence[Any], target_title: Sequence[str], **kwargs) -> list[float]:
    """STARec ranking reward per completion; ``target_title`` is the held-out item's title (dataset column)."""
    return [rank_to_reward(target_rank(completion_text(c), str(t)))
            for c, t in zip(completions, target_title, strict=True)]


def make_rank_reward(target_column: str) -> Callable[..., list[float]]:
    """:func:`rank_reward` reading the target from another column name (trl logs it as ``rank_reward``)."""
    def rank_reward(completions, **kwargs):  # noqa: D401 — the name is what trl logs
        return [rank_to_reward(target_rank(completion_text(c), str(t)))
                for c, t in zip(completions, kwargs[target_column], strict=True)]
    return rank_reward


def memory_update_reward(rank_with_memory: Callable[[str, dict[str, Any]], int | None],
                         ) -> Callable[..., list[float]]:
    """Reward for STARec's memory-update task.

    ``rank_with_memory(memory, row)`` runs the follow-up ranking of the sample ``row`` (its dataset columns) with the
    rewritten ``memory`` and returns the target's 1-based rank (None if unparsable). The reward is
    :func:`rank_to_reward` of that rank.
    """
    def memory_update_reward(prompts, completions, **kwargs):
        columns = {k: v for k, v in kwargs.items() if isinstance(v, list) and len(v) == len(completions)}
        out = []
        for i, c in enumerate(completions):
            row = {k: v[i] for k, v in columns.items()}
            row["prompt"] = prompts[i]
            out.append(rank_to_reward(rank_with_memory(completion_text(c), row)))
        return out
    return memory_update_reward


def yes_reward(completions: Sequence[Any], **kwargs) -> list[float]:
    """1.0 when the first word of the answer is "Yes" (any case), else 0.0."""
    out = []
    for c in completions:
        m = _WORD.search(completion_text(c))
        out.append(1.0 if m and m.group(0).lower() == "yes" else 0.0)
    return out


def grpo_dataset(df, cfg: GRPOConfig):
    from datasets import Dataset

    df = df.copy()
    prompts = [str(p) for p in df[cfg.prompt_column]]
    df = df.drop(columns=[cfg.prompt_column])
    records = df.to_dict("records")
    for rec, p in zip(records, prompts, strict=True):
        rec["prompt"] = chat_messages(p) if cfg.chat_template else p
    return Dataset.from_list(records)


def _lean_grpo_trainer_class():
    """trl's ``GRPOTrainer`` whose per-token log-probs run the LM head on completion positions only
    (``training.lean_logits``). trl's fused head scores every prompt position too off CUDA / XPU; for text-only
    batches without MoE aux loss the result is the same (tested), anything else goes to trl's own path."""
    from trl import GRPOTrainer

    class LeanGRPOTrainer(GRPOTrainer):
        def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep,
                                               batch_size=None, compute_entropy=False, compute_aux_loss=False,
                                               **multimodal):
            if compute_aux_loss or any(v is not None for v in multimodal.values()):
                return super()._get_per_token_logps_and_entropies(
                    model, input_ids, attention_mask, logits_to_keep, batch_size, compute_entropy,
                    compute_aux_loss, **multimodal)
            batch_size = batch_size or input_ids.size(0)
            logps, ents = [], []
            for s in range(0, input_ids.size(0), batch_size):  # trl's row chunks bound the activation memory
                with self.accelerator.autocast():
                    lp, ent = lean_completion_logps(model, input_ids[s:s + batch_size],
                                                    attention_mask[s:s + batch_size], logits_to_keep,
                                                    temperature=self.temperature)
                logps.append(lp)
                ents.append(ent)
            return torch.cat(logps), (torch.cat(ents) if compute_entropy else None), None

    return LeanGRPOTrainer


def build_grpo_trainer(cfg: GRPOConfig, df=None, reward_funcs: Sequence[Callable] | None = None,
                       callbacks: Sequence = ()):
    from transformers import set_seed
    from trl import GRPOConfig as TrlGRPOConfig
    from trl import GRPOTrainer

    if reward_funcs is None:
        reward_funcs = [make_rank_reward(cfg.target_column)] if cfg.reward == "rank" else [yes_reward]
    needed = [cfg.prompt_column] + ([cfg.target_column] if cfg.reward == "rank" else [])
    if df is None:
        df = read_table(cfg.data.train, needed, cfg.data.limit)
    set_seed(cfg.training.seed)
    tokenizer = load_tokenizer(cfg.model.name)
    tokenizer.padding_side = "left"  # generation pads on the left
    model = load_peft_model(cfg.model, dtype=precision_plan(cfg.training, "train:grpo").weights_dtype)
    kw = training_kwargs(cfg.training)
    args = TrlGRPOConfig(
        **kw, num_generations=cfg.num_generations, beta=cfg.beta, max_completion_length=cfg.max_completion_length,
        temperature=cfg.temperature, remove_unused_columns=False, log_completions=False,
        generation_kwargs=dict(cfg.generation_kwargs) or None,
    )
    trainer_cls = (_lean_grpo_trainer_class() if cfg.training.lean_logits and supports_lean(model)
                   else GRPOTrainer)
    trainer = trainer_cls(model=model, reward_funcs=list(reward_funcs), args=args,
                          train_dataset=grpo_dataset(df, cfg), processing_class=tokenizer,
                          callbacks=list(callbacks))
    return trainer, tokenizer


def train_grpo(cfg: GRPOConfig, df=None, reward_funcs: Sequence[Callable] | None = None,
               callbacks: Sequence = ()) -> TrainResult:
    """Run (or resume, or skip if complete) GRPO; ``reward_funcs`` default to the config's built-in reward."""
    if is_complete(cfg.training.output_dir):
        return skipped_result(cfg)
    trainer, tokenizer = build_grpo_trainer(cfg, df, reward_funcs, callbacks)
    return run_training(trainer, cfg, tokenizer=tokenizer)
