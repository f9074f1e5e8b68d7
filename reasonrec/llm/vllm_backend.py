"""The vLLM backend (``pip install 'reasonrec[vllm]'``, GPU): offline ``vllm.LLM`` for high-throughput generation.

- ``generate`` → ``LLM.generate`` with ``SamplingParams(n, temperature, top_p, max_tokens, stop, seed)``; vLLM
  batches and schedules all prompts itself (continuous batching, paged KV cache).
- ``sequence_logprob`` and ``choice_probs`` read ``prompt_logprobs`` of prompt + completion token ids (one
  generated token, discarded), so multi-token choices are exact, as in the transformers backend.
- LoRA adapters by name: ``options.adapters = {name: folder}``; each request carries its own ``LoRARequest``, so
  one call mixes adapters (vLLM's multi-LoRA batching).
- ``generate(constraint=)`` → vLLM's structured outputs, one ``SamplingParams`` per prompt: ``StructuredOutputsParams``
  in ``SamplingParams(structured_outputs=)`` where vLLM has it, else ``GuidedDecodingParams`` in
  ``SamplingParams(guided_decoding=)`` (vLLM 0.12 removed the latter), found by feature detection. vLLM applies a
  constraint to the continuation only, so a response prefix with a constraint is refused (local backends consume
  the prefix). DEVIATION: a :class:`~reasonrec.llm.constraints.Ranking` is enforced as its regex (titles may repeat;
  the ranking parser drops repeats).

This module is exercised by the same contract tests as the other backends; they are skipped when vllm is not
importable (CPU-only machines).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from ..config import Section
from ..errors import BackendError
from .base import (
    AdapterArg,
    ConstraintArg,
    Generation,
    Prompt,
    SequenceLogprob,
    as_messages,
    chat_text,
    check_generate_args,
    choice_variants,
    per_prompt_adapters,
    renormalise,
    split_response_prefix,
    truncate_at_stop,
)
from .constraints import Constraint, check_supported, per_prompt_constraints
from .hf import resolve_model_path


def structured_spec(constraint: Constraint) -> dict:
    """The keyword arguments of vLLM's ``StructuredOutputsParams`` / ``GuidedDecodingParams`` for ``constraint``
    (both classes take ``json``, ``regex``, ``choice``)."""
    if constraint.kind == "json":
        return {"json": constraint.schema}  # type: ignore[attr-defined]
    if constraint.kind == "choice":
        return {"choice": list(constraint.options)}  # type: ignore[attr-defined]
    pattern = constraint.regex()
    if pattern is None:
        raise BackendError(f"vLLM cannot enforce {constraint!r}: it has no regex form")
    return {"regex": pattern}


def structured_params(constraint: Constraint, sampling_params_module) -> dict:
    """``SamplingParams`` keyword arguments that enforce ``constraint`` on this vLLM version."""
    spec = structured_spec(constraint)
    cls = getattr(sampling_params_module, "StructuredOutputsParams", None)
    if cls is not None:
        return {"structured_outputs": cls(**spec)}
    cls = getattr(sampling_params_module, "GuidedDecodingParams", None)
    if cls is not None:
        return {"guided_decoding": cls(**spec)}
    raise BackendError("this vLLM has neither StructuredOutputsParams nor GuidedDecodingParams; upgrade vLLM or "
                       "drop the constraint")


class VLLMOptions(Section):
    """Options of the vLLM backend.

    Fields:
        dtype: weights dtype passed to vLLM; default ``auto``.
        gpu_memory_utilization: fraction of GPU memory vLLM may take; default 0.85.
        max_model_len: context window; ``None`` = the model's.
        adapters: LoRA adapters ``{name: folder}``; enables vLLM's LoRA support.
        max_lora_rank: largest adapter rank to reserve room for; default 64.
        system_prompt: system message prepended to prompts that have none.
        tensor_parallel_size: GPUs one engine spans (under ``engine: ray`` each replica reserves as many).
        batch_size: prompts the cache sends per call (one shard under ``engine: ray``); vLLM schedules them by
            continuous batching, so on a GPU a few hundred keeps it busy. Default 16.
    """

    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    gpu_memory_utilization: float = 0.85
    max_model_len: int | None = None
    adapters: dict[str, Path] = {}
    max_lora_rank: int = 64
    system_prompt: str | None = None
    tensor_parallel_size: int = Field(1, ge=1)
    batch_size: int = Field(16, ge=1)


class VLLMBackend:
    supports = frozenset({"generate", "choice_probs", "sequence_logprob", "adapters", "mixed_adapters",
                          "constraint:regex", "constraint:json", "constraint:choice", "constraint:ranking"})

    def check_constraints(self, constraints) -> None:
        check_supported("vLLM", self.supports, constraints)

    def __init__(self, name: str, options: VLLMOptions | None = None):
        try:
            import vllm
        except ImportError:
            raise BackendError("the vLLM backend needs vllm (GPU): pip install 'reasonrec[vllm]'") from None
        self.options = options or VLLMOptions()
        path = resolve_model_path(name)
        kwargs = {"model": path, "dtype": self.options.dtype,
                  "gpu_memory_utilization": self.options.gpu_memory_utilization}
        if self.options.max_model_len:
            kwargs["max_model_len"] = self.options.max_model_len
        if self.options.tensor_parallel_size > 1:
            kwargs["tensor_parallel_size"] = self.options.tensor_parallel_size
        if self.options.adapters:
            kwargs.update(enable_lora=True, max_lora_rank=self.options.max_lora_rank,
                          max_loras=len(self.options.adapters))
        self.engine = vllm.LLM(**kwargs)
        self.tokenizer = self.engine.get_tokenizer()
        self._lora = {}
        for i, (adapter_name, adapter_path) in enumerate(self.options.adapters.items(), start=1):
            from vllm.lora.request import LoRARequest

            self._lora[adapter_name] = LoRARequest(adapter_name, i, str(adapter_path))
        self.model_id = f"vllm:{name}:{self.options.dtype}"

    def adapter_id(self, name: str | None) -> str:
        if name is None:
            return ""
        if name not in self._lora:
            raise BackendError(f"unknown adapter '{name}'; loaded adapters: {list(self._lora) or 'none'}")
        return f"{name}@{self._lora[name].lora_path}"

    def _lora_requests(self, adapter: AdapterArg, n: int):
        names = per_prompt_adapters(adapter, n)
        for a in set(names):
            self.adapter_id(a)
        if all(a is None for a in names):
            return None
        return [self._lora[a] if a is not None else None for a in names]

    def format(self, prompt: Prompt) -> str:
        return chat_text(self.tokenizer, prompt, self.options.system_prompt)

    def _prompt_ids(self, prompt: Prompt) -> list[int]:
        return self.tokenizer(self.format(prompt), add_special_tokens=False)["input_ids"]

    def generate(self, prompts: Sequence[Prompt], n: int = 1, temperature: float = 0.0, top_p: float = 1.0,
                 max_new_tokens: int = 256, stop: Sequence[str] | None = None, seed: int = 0,
                 adapter: AdapterArg = None, constraint: ConstraintArg = None) -> list[Generation]:
        import vllm.sampling_params as sp
        from vllm import SamplingParams

        check_generate_args(n, temperature, top_p, max_new_tokens)
        constraints = per_prompt_constraints(constraint, len(prompts))
        self.check_constraints(constraints)
        common = dict(n=n, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens,
                      stop=list(stop) if stop else None, seed=seed)
        if any(c is not None for c in constraints):
            for p, c in zip(prompts, constraints, strict=True):
                if c is not None and split_response_prefix(as_messages(p))[1]:
                    raise BackendError("vLLM applies a constraint to the continuation only; a response prefix "
                                       "with a constraint needs a local backend (transformers, llama.cpp)")
            params = [SamplingParams(**common, **(structured_params(c, sp) if c is not None else {}))
                      for c in constraints]
        else:
            params = SamplingParams(**common)
        inputs = [{"prompt_token_ids": self._prompt_ids(p)} for p in prompts]
        outs = self.engine.generate(inputs, params, lora_request=self._lora_requests(adapter, len(prompts)),
                                    use_tqdm=False)
        return [Generation(texts=[truncate_at_stop(c.text, stop)[0] for c in o.outputs],
                           prompt_tokens=len(o.prompt_token_ids), completion_tokens=[len(c.token_ids) for c in o.outputs])
                for o in outs]

    def _score_ids(self, prompt_ids: list[list[int]], completion_ids: list[list[int]], lora) -> list[list[float]]:
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        inputs = [{"prompt_token_ids": p + c} for p, c in zip(prompt_ids, completion_ids, strict=True)]
        outs = self.engine.generate(inputs, params, lora_request=lora, use_tqdm=False)
        result = []
        for o, p, c in zip(outs, prompt_ids, completion_ids, strict=True):
            # prompt_logprobs[t] maps token id → Logprob for the token at position t (None at t = 0).
            plp = o.prompt_logprobs
            result.append([float(plp[len(p) + k][tok].logprob) for k, tok in enumerate(c)])
        return result

    def sequence_logprob(self, prompts: Sequence[Prompt], completions: Sequence[str],
                         adapter: AdapterArg = None) -> list[SequenceLogprob]:
        if len(prompts) != len(completions):
            raise BackendError(f"sequence_logprob: {len(prompts)} prompts but {len(completions)} completions")
        lora = self._lora_requests(adapter, len(prompts))
        pids = [self._prompt_ids(p) for p in prompts]
        cids = [self.tokenizer(c, add_special_tokens=False)["input_ids"] for c in completions]
        idx = [i for i, c in enumerate(cids) if c]
        scored = dict(zip(idx, self._score_ids([pids[i] for i in idx], [cids[i] for i in idx],
                                               [lora[i] for i in idx] if lora else None), strict=True))
        return [SequenceLogprob(total=float(sum(scored.get(i, []))), token_logps=scored.get(i, []),
                                tokens=self.tokenizer.convert_ids_to_tokens(c)) for i, c in enumerate(cids)]

    def choice_probs(self, prompts: Sequence[Prompt], choices: Sequence[str] = ("Yes", "No"),
                     adapter: AdapterArg = None) -> np.ndarray:
        if len(choices) < 2:
            raise BackendError(f"choice_probs needs at least two choices; got {list(choices)}")
        lora = self._lora_requests(adapter, len(prompts))
        pids = [self._prompt_ids(p) for p in prompts]
        pairs = []
        for p in range(len(prompts)):
            for c, choice in enumerate(choices):
                seen = []
                for v in choice_variants(choice):
                    ids = self.tokenizer(v, add_special_tokens=False)["input_ids"]
                    if ids and ids not in seen:
                        seen.append(ids)
                        pairs.append((p, c, ids))
        scored = self._score_ids([pids[p] for p, _, _ in pairs], [s for _, _, s in pairs],
                                 [lora[p] for p, _, _ in pairs] if lora else None)
        mass = np.zeros((len(prompts), len(choices)))
        for (p, c, _), logps in zip(pairs, scored, strict=True):
            mass[p, c] += float(np.exp(sum(logps)))
        return renormalise(mass)
