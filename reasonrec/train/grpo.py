"""GRPO with trl's ``GRPOTrainer`` and plain-Python reward functions (STARec §3.4).

Reward functions follow trl's convention: keyword arguments ``prompts``, ``completions`` and every dataset column
(one value per completion), ``**kwargs`` for the rest; they return one ``float`` (or ``None`` = not applicable) per
completion, and can be called and tested outside any trainer.

- :func:`rank_reward` — STARec's ranking reward: +1 if the held-out item is ranked first, +0.5 for ranks 2-5, 0 for
  6-10, −0.5 for 11-20, −1 below 20, when it is missing, or when the output cannot be parsed. The rank is read by
  the evaluation parser (:func:`reasonrec.llm.parsers.parse_ranking`: think block stripped, each numbered line
  fuzzy-matched to *one* candidate title, duplicates dropped), so reward and evaluation rank identically; a line
  naming several titles counts as one of them, and a target the model never named is unranked (−1), not
  appended the way evaluation completes a list. Hence the reward needs the prompt's candidate titles (a column).
- :func:`memory_update_reward` — STARec's memory-update task: the completion is a new user memory; a follow-up
  ranking with that memory (a callable the method supplies, e.g. the current policy answering the ranking prompt)
  gives the target's rank, rewarded as above.
- :func:`yes_reward` — 1 when the answer's first word is "Yes": a trivially learnable reward for smoke tests.

Constrained rollouts (``constraint_for``): each rollout is decoded under its prompt's constraint (e.g. the ranking a
permutation of the candidates, as evaluation decodes it), so a small policy's rollouts earn rewards that differ —
unconstrained, SmolLM2-135M never wrote a list naming the target in the STARec CPU study (every reward −1, zero
advantage, a GRPO that does not move). trl 1.16 has no hook for logits processors on its transformers rollout
path, so :func:`_constrained_trainer_class` wraps the policy's ``generate`` for the duration of trl's own call
(vLLM and continuous-batching rollouts are refused rather than silently left unconstrained). The loss still
scores tokens under the unmasked policy, as trl does for any sampler: masked tokens are never sampled, and the
gradient raises the unmasked log-probability of the better permutations.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..errors import ConfigError
from ..llm.parsers import ParseError
from ..llm.parsers import parse_ranking as _parse_ranking
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

_WORD = re.compile(r"[A-Za-z]+")


def completion_text(completion: Any) -> str:
    """trl passes plain strings, or a list of chat messages in conversational mode."""
    if isinstance(completion, list):
        return "".join(str(m.get("content", "")) for m in completion if isinstance(m, dict))
    return str(completion)


def candidate_titles(candidates: Any) -> list[str]:
    """A candidates column value as a list of titles: a list / array of titles, or one title per line."""
    if isinstance(candidates, str):
        return [t for t in candidates.split("\n") if t.strip()]
    return [str(t) for t in candidates]


def target_rank(text: str, target: str, candidates: Any) -> int | None:
    """1-based rank of ``target`` among the candidates the ranked list in ``text`` names, as evaluation reads it
    (:func:`reasonrec.llm.parsers.parse_ranking` over ``candidates``, the titles the prompt showed); ``None`` when
    the output names no candidate, or never names the target (missing items are not ranked by the model)."""
    titles = candidate_titles(candidates)
    try:
        want = titles.index(str(target))
    except ValueError:
        return None
    try:
        ranking = _parse_ranking(text, dict(enumerate(titles)))
    except ParseError:
        return None
    named = ranking.ids[:ranking.matched]  # ids after `matched` are the missing ones parse_ranking appended
    return named.index(want) + 1 if want in named else None


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


def _rank_rewards(completions, targets, candidates, tasks=None) -> list[float | None]:
    out: list[float | None] = []
    for i, (c, t, cands) in enumerate(zip(completions, targets, candidates, strict=True)):
        if tasks is not None and tasks[i] != "rank":
            out.append(None)  # another task's row (memory update): not this reward's to score
        else:
            out.append(rank_to_reward(target_rank(completion_text(c), str(t), cands)))
    return out


def rank_reward(completions: Sequence[Any], target_title: Sequence[str], candidates: Sequence[Any],
                **kwargs) -> list[float | None]:
    """STARec ranking reward per completion; ``target_title`` is the held-out item's title and ``candidates`` the
    titles the prompt showed (dataset columns). With a ``task`` column, rows whose task is not ``rank`` get
    ``None`` (trl: not applicable)."""
    return _rank_rewards(completions, target_title, candidates, kwargs.get("task"))


def make_rank_reward(target_column: str, candidates_column: str = "candidates") -> Callable[..., list[float]]:
    """:func:`rank_reward` reading the target and candidates from other column names (trl logs it as
    ``rank_reward``)."""
    def rank_reward(completions, **kwargs):  # noqa: D401 — the name is what trl logs
        return _rank_rewards(completions, kwargs[target_column], kwargs[candidates_column], kwargs.get("task"))
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
        out: list[float | None] = []
        for i, c in enumerate(completions):
            row = {k: v[i] for k, v in columns.items()}
            row["prompt"] = prompts[i]
            if row.get("task", "memory") != "memory":
                out.append(None)  # a ranking row: rank_reward scores it
                continue
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
    systems = ([str(s) if s else None for s in df[cfg.system_column]] if cfg.system_column
               else [None] * len(prompts))
    df = df.drop(columns=[cfg.prompt_column])
    records = df.to_dict("records")
    for rec, p, s in zip(records, prompts, systems, strict=True):
        rec["prompt"] = chat_messages(p, system=s) if cfg.chat_template else p
    return Dataset.from_list(records)


def _constrained_trainer_class(base, constraint_for: Callable[[dict], Any]):
    """``base`` (a ``GRPOTrainer``) whose rollouts decode under ``constraint_for(row)`` (a
    :class:`~reasonrec.llm.constraints.Constraint` or ``None``; ``row`` = the dataset row of the rollout)."""
    from functools import partial

    from transformers import LogitsProcessorList

    from ..llm.hf import ConstraintProcessor, grammar_session_for

    class ConstrainedGRPOTrainer(base):
        def _generate_and_score_completions(self, inputs):
            # trl repeats each prompt num_generations times in `inputs`: one constraint per rollout row
            self._row_constraints = [constraint_for(x) for x in inputs]
            return super()._generate_and_score_completions(inputs)

        def _generate_single_turn(self, prompt_ids, *args, **kwargs):
            cons = getattr(self, "_row_constraints", None) or []
            if not any(c is not None for c in cons):
                return super()._generate_single_turn(prompt_ids, *args, **kwargs)
            if self.use_vllm or self.use_transformers_continuous_batching:
                raise ConfigError("grpo: constrained rollouts run on trl's transformers generate path only "
                                  "(not vLLM / continuous batching)")
            if len(cons) != len(prompt_ids):
                raise RuntimeError(f"{len(prompt_ids)} rollout prompts for {len(cons)} rows")
            model = self.accelerator.unwrap_model(self.model_wrapped)  # what trl's generate path unwraps too
            if getattr(self, "_grammars", None) is None:
                self._grammars = grammar_session_for(model, self.processing_class)
            proc = ConstraintProcessor.for_constraints(self._grammars, cons, self.max_completion_length)
            model.generate = partial(type(model).generate, model, logits_processor=LogitsProcessorList([proc]))
            try:
                out = super()._generate_single_turn(prompt_ids, *args, **kwargs)
            finally:
                del model.generate  # the instance attribute; the class method is back
            if not proc.calls:
                raise RuntimeError("trl generated the rollouts without the constraint (its generate path changed)")
            return out

    return ConstrainedGRPOTrainer


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
                       callbacks: Sequence = (), constraint_for: Callable[[dict], Any] | None = None):
    """trl's ``GRPOTrainer`` over ``df`` (or ``cfg.data.train``); with ``constraint_for`` each rollout decodes under
    the constraint it returns for its dataset row (see the module docstring)."""
    from transformers import set_seed
    from trl import GRPOConfig as TrlGRPOConfig
    from trl import GRPOTrainer

    if reward_funcs is None:
        reward_funcs = ([make_rank_reward(cfg.target_column, cfg.candidates_column)] if cfg.reward == "rank"
                        else [yes_reward])
    needed = [cfg.prompt_column] + ([cfg.target_column, cfg.candidates_column] if cfg.reward == "rank" else [])
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
    if constraint_for is not None:
        gen = dict(cfg.generation_kwargs)  # trl's own top_k / top_p defaults (0, 1.0) leave every token
        if gen.get("top_k") or gen.get("top_p", 1.0) < 1.0:
            # transformers runs its warpers before user processors: top-k / top-p first could leave no allowed token
            raise ConfigError("grpo: constrained rollouts need top_k 0 and top_p 1 in generation_kwargs")
        trainer_cls = _constrained_trainer_class(trainer_cls, constraint_for)
    trainer = trainer_cls(model=model, reward_funcs=list(reward_funcs), args=args,
                          train_dataset=grpo_dataset(df, cfg), processing_class=tokenizer,
                          callbacks=list(callbacks))
    return trainer, tokenizer


def train_grpo(cfg: GRPOConfig, df=None, reward_funcs: Sequence[Callable] | None = None,
               callbacks: Sequence = (), constraint_for: Callable[[dict], Any] | None = None) -> TrainResult:
    """Run (or resume, or skip if complete) GRPO; ``reward_funcs`` default to the config's built-in reward."""
    if is_complete(cfg.training.output_dir):
        return skipped_result(cfg)
    trainer, tokenizer = build_grpo_trainer(cfg, df, reward_funcs, callbacks, constraint_for)
    return run_training(trainer, cfg, tokenizer=tokenizer)
