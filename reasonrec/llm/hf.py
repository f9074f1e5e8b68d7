"""The transformers backend (the default): CPU or GPU, any dtype, LoRA adapters by name via peft.

Throughput comes from three things, measured in ``benchmarks/generation.py``:
- prompts are sorted by token length and cut into batches, so left padding wastes little compute;
- each batch is one ``model.generate`` call with a KV cache (``n`` samples are rows of the same batch);
- adapters are addressed per row: a batch that mixes adapters is one forward through peft's mixed-batch path
  (``adapter_names=``, ``"__base__"`` for the base model; peft ``LoraModel._enable_peft_forward_hooks``).

Scoring (``choice_probs``, ``sequence_logprob``) runs the prompt and completion through one forward pass and
reads ``log_softmax`` of the logits at the completion positions, the same computation as TRL's
``selective_log_softmax`` on the DPO side. Rows are left-padded, so every completion ends its row and only the
last ``max completion length + 1`` positions go through ``lm_head`` (``logits_to_keep``; the full (B, T, V)
logits of a 49k vocabulary would dominate memory). Padded rows get explicit ``position_ids`` (cumulative sum of
the attention mask) so that a padded row scores exactly like the same row alone.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..config import Section
from ..errors import BackendError
from . import bundled
from .base import (
    BASE,
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
from .constraints import LOCAL_KINDS, check_supported, per_prompt_constraints
from .device import resolve_dtype

TINY = "tiny-random"


class TransformersOptions(Section):
    """Options of the transformers backend.

    Fields:
        dtype: weights and compute dtype; ``auto`` = bfloat16 where the device runs it natively (AMX or
            AVX512-BF16 CPUs, bf16 GPUs), else float32 (:func:`reasonrec.llm.device.resolve_dtype`; the choice is
            logged and listed by ``device.dtype_manifest()``). Scores are read in float32 either way.
        device: ``auto`` (cuda if available, else cpu), ``cpu``, ``cuda``, ``cuda:1``...
        batch_size: prompts per forward/generate call (``n`` samples multiply the rows); default 16.
        adapters: LoRA adapters to load, ``{name: folder saved by peft}``; select one per call with ``adapter=``.
        chat_template: apply the tokenizer's chat template (default true); false feeds the raw message text.
        system_prompt: system message prepended to prompts that have none (default: the template's own).
        max_prompt_tokens: keep only the last this-many prompt tokens (left truncation); ``None`` keeps all.
        threads: torch CPU threads; ``None`` leaves torch's default.
        scheduler: how ``generate`` batches rows: ``static`` (length-sorted batches, one ``model.generate`` call
            each) or ``refill`` (rows leave the batch when they end and waiting rows take their slots,
            :mod:`reasonrec.llm.hf_refill`). Default ``static`` until ``benchmarks/generation.py`` shows refill
            faster on an idle machine (the issue-14 run on a loaded one did not finish; README "LLMs").
    """

    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: str = "auto"
    batch_size: int = 16
    adapters: dict[str, Path] = {}
    chat_template: bool = True
    system_prompt: str | None = None
    max_prompt_tokens: int | None = None
    threads: int | None = None
    scheduler: Literal["static", "refill"] = "static"


def resolve_model_path(name: str) -> str:
    """Bundled alias → its folder; local folder → itself; otherwise a Hugging Face id (local cache only)."""
    if name == bundled.SMOLLM2:
        return str(bundled.smollm2_hf_dir())
    if name == TINY:
        return str(bundled.tiny_model())
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser())
    if Path(name).suffix == ".gguf":
        raise BackendError(f"{name} is a GGUF file; use backend 'llamacpp' (pip install 'reasonrec[llamacpp]')")
    return name


def _batch_seed(seed: int, rows: list[list[int]]) -> int:
    """A seed for one ``generate`` call from the caller's seed and the batch's tokens: the same call samples the
    same texts whatever ran before it."""
    digest = hashlib.sha256(f"{seed}|{rows}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class TransformersLLM:
    """An :class:`~reasonrec.llm.base.LLM` on a transformers causal LM (optionally a peft model)."""

    supports = frozenset({"generate", "choice_probs", "sequence_logprob", "adapters", "mixed_adapters",
                          *LOCAL_KINDS})

    def __init__(self, name: str, options: TransformersOptions | None = None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.options = options or TransformersOptions()
        if self.options.threads:
            torch.set_num_threads(self.options.threads)
        path = resolve_model_path(name)
        device = self.options.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = resolve_dtype(self.options.dtype, device, where=f"transformers:{name}").dtype
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype), local_files_only=True)
        except OSError as err:
            raise BackendError(
                f"cannot load model '{name}' with transformers: not a bundled alias ({bundled.SMOLLM2}, {TINY}), "
                f"not a local folder, and not in the local Hugging Face cache ({err.__class__.__name__}: "
                f"{str(err).splitlines()[0]}). Download it first or pass a folder."
            ) from None
        self._setup(model.to(device).eval(), tokenizer, model_id=f"transformers:{name}:{dtype}")
        for adapter_name, adapter_path in self.options.adapters.items():
            self.load_adapter(adapter_name, adapter_path)

    @classmethod
    def from_model(cls, model, tokenizer, model_id: str, options: TransformersOptions | None = None):
        """Wrap an in-memory model (e.g. a trainer's peft model) without reloading it."""
        self = cls.__new__(cls)
        self.options = options or TransformersOptions()
        self._setup(model, tokenizer, model_id)
        return self

    def _setup(self, model, tokenizer, model_id: str) -> None:
        self.model = model
        self.tokenizer = tokenizer
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.model_id = model_id
        self._adapter_ids: dict[str, str] = {}
        self._eos_ids = eos_token_ids(model, tokenizer)
        self._grammars = None  # GrammarSession, built on the first constrained call

    def check_constraints(self, constraints) -> None:
        check_supported("transformers", self.supports, constraints)

    def grammar_session(self):
        """The compiled-grammar cache for this tokenizer (xgrammar's vocabulary of the model's logits width)."""
        if self._grammars is None:
            self._grammars = grammar_session_for(self.model, self.tokenizer)
        return self._grammars

    @property
    def device(self):
        return next(self.model.parameters()).device

    # ------------------------------------------------------------------------------------------ adapters

    def load_adapter(self, name: str, path: str | os.PathLike) -> None:
        """Load a peft LoRA adapter saved in ``path`` under ``name`` (the base model stays shared)."""
        from peft import PeftModel

        path = Path(path)
        weights = next((p for p in (path / "adapter_model.safetensors", path / "adapter_model.bin") if p.exists()),
                       None)
        if weights is None:
            raise BackendError(f"adapter '{name}': {path} has no adapter_model.safetensors; save it with peft's "
                               "save_pretrained")
        if name == BASE:
            raise BackendError(f"adapter name {BASE!r} is reserved for the base model")
        if isinstance(self.model, PeftModel):
            self.model.load_adapter(str(path), adapter_name=name)
        else:
            self.model = PeftModel.from_pretrained(self.model, str(path), adapter_name=name)
        self.model.eval()
        # The cache key uses the weights' hash, so a retrained adapter under the same name is not confused.
        self._adapter_ids[name] = f"{name}@{hashlib.sha256(weights.read_bytes()).hexdigest()[:16]}"

    @property
    def adapters(self) -> list[str]:
        return list(self._adapter_ids)

    def adapter_id(self, name: str | None) -> str:
        if name is None:
            return ""
        if name not in self._adapter_ids:
            peft_config = getattr(self.model, "peft_config", {})
            if name in peft_config:  # attached in memory by a trainer (from_model)
                return name
            raise BackendError(f"unknown adapter '{name}'; loaded adapters: {self.adapters or 'none'} "
                               "(add it to llm.options.adapters or call load_adapter)")
        return self._adapter_ids[name]

    def _adapter_kwargs(self, adapters: list[str | None]) -> dict[str, Any]:
        for a in set(adapters):
            self.adapter_id(a)  # validates names up front
        if not hasattr(self.model, "peft_config"):
            return {}
        # peft routes each row to its adapter; "__base__" rows bypass every LoRA layer.
        return {"adapter_names": [BASE if a is None else a for a in adapters]}

    def with_soft_tokens(self, projector, placeholder: str | None = None):
        """This model with ``projector(vectors)`` injected at placeholder tokens (:mod:`reasonrec.llm.soft_tokens`)."""
        from .soft_tokens import SoftTokenLLM

        return SoftTokenLLM(self, projector, placeholder)

    # ------------------------------------------------------------------------------------------ formatting

    def format(self, prompt: Prompt) -> str:
        """The exact text the model sees (chat template applied, generation prompt appended, then the response
        prefix if the chat ends with an assistant message)."""
        return chat_text(self.tokenizer, prompt, self.options.system_prompt, self.options.chat_template)

    def encode_prompt(self, prompt: Prompt) -> list[int]:
        templated = self.options.chat_template and getattr(self.tokenizer, "chat_template", None)
        # A chat template writes its own special tokens; raw text gets the tokenizer's (e.g. BOS).
        ids = self.tokenizer(self.format(prompt), add_special_tokens=not templated)["input_ids"]
        if self.options.max_prompt_tokens and len(ids) > self.options.max_prompt_tokens:
            ids = ids[-self.options.max_prompt_tokens:]
        return ids

    def _pad(self, rows: list[list[int]], side: str):
        import torch

        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            if side == "left":
                ids[i, width - len(r):] = torch.tensor(r)
                mask[i, width - len(r):] = 1
            else:
                ids[i, :len(r)] = torch.tensor(r)
                mask[i, :len(r)] = 1
        return ids.to(self.device), mask.to(self.device)

    def _logits(self, ids, mask, adapters: list[str | None], keep: int = 0):
        """Forward pass → logits (B, keep or T, V) of the last ``keep`` positions (0 = all); position ids follow
        the mask so padding never shifts a row."""
        import torch

        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.inference_mode():
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=position_ids, logits_to_keep=keep,
                             **self._adapter_kwargs(adapters))
        return out.logits.float()

    def _batches(self, lengths: list[int]) -> list[list[int]]:
        """Indices sorted by length, cut into batches of ``batch_size`` (similar lengths → little padding)."""
        order = sorted(range(len(lengths)), key=lambda i: lengths[i])
        bs = max(1, self.options.batch_size)
        return [order[i:i + bs] for i in range(0, len(order), bs)]

    # ------------------------------------------------------------------------------------------ interface

    def generate(self, prompts: Sequence[Prompt], n: int = 1, temperature: float = 0.0, top_p: float = 1.0,
                 max_new_tokens: int = 256, stop: Sequence[str] | None = None, seed: int = 0,
                 adapter: AdapterArg = None, constraint: ConstraintArg = None) -> list[Generation]:
        check_generate_args(n, temperature, top_p, max_new_tokens)
        adapters = per_prompt_adapters(adapter, len(prompts))
        constraints = per_prompt_constraints(constraint, len(prompts))
        self.check_constraints(constraints)
        encoded = [self.encode_prompt(p) for p in prompts]
        if self.options.scheduler == "refill":
            from .hf_refill import generate_refill

            return generate_refill(self, prompts, encoded, n, temperature, top_p, max_new_tokens, stop, seed,
                                   adapters, constraints)
        results: list[Generation | None] = [None] * len(prompts)
        for batch in self._batches([len(e) for e in encoded]):
            # n samples of a prompt are n rows, so adapter_names has one entry per row (peft's mixed batch).
            rows = [encoded[i] for i in batch for _ in range(n)]
            row_adapters = [adapters[i] for i in batch for _ in range(n)]
            matchers = None
            if any(constraints[i] is not None for i in batch):
                session = self.grammar_session()
                prefixes = {i: split_response_prefix(as_messages(prompts[i]))[1] for i in batch}
                matchers = [session.matcher(constraints[i], prefixes[i], max_new_tokens)
                            if constraints[i] is not None else None for i in batch for _ in range(n)]
            new = self._decode(rows, row_adapters, _batch_seed(seed, rows), max_new_tokens, temperature, top_p, stop,
                               matchers)
            for j, i in enumerate(batch):
                texts, counts = [], []
                for row in new[j * n:(j + 1) * n]:
                    text = self.tokenizer.decode(row, skip_special_tokens=True)
                    texts.append(truncate_at_stop(text, stop)[0])
                    counts.append(len(row))
                results[i] = Generation(texts=texts, prompt_tokens=len(encoded[i]), completion_tokens=counts)
        return results  # type: ignore[return-value]

    def _decode(self, rows: list[list[int]], adapters: list[str | None], seed: int, max_new_tokens: int,
                temperature: float, top_p: float, stop: Sequence[str] | None,
                matchers: list | None = None) -> list[list[int]]:
        """One batched ``model.generate`` call on left-padded rows → the new token ids of each row, up to and
        including its end-of-sequence token (padding after it removed).

        A hand-written decode loop that drops finished rows from the KV cache was tried and measured against
        this on the bundled model (16 ML-100K prompts, batch 16, 1 CPU thread): 14.4 vs 14.0 tok/s at 48 new
        tokens, and 12.2-14.4 vs 12.3-16.1 tok/s at 128 new tokens, where half the rows finish early. No clear
        gain, so the library call stays. Sampling is temperature → top-p (top-k off), seeded per call under
        ``fork_rng`` so the caller's global RNG is untouched.

        ``matchers`` (one :class:`~reasonrec.llm.constraints.RowMatcher` or ``None`` per row) constrain the rows:
        transformers appends user logits processors after its own temperature/top-p warpers, and masking after
        top-p could leave a row with no token at all, so a constrained call runs the mask, then temperature, then
        top-p as one processor list of its own.
        """
        import torch

        ids, mask = self._pad(rows, side="left")
        kwargs: dict[str, Any] = dict(max_new_tokens=max_new_tokens, pad_token_id=self.tokenizer.pad_token_id,
                                      eos_token_id=sorted(self._eos_ids), top_k=None)
        if matchers is not None:
            from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

            procs: list = [ConstraintProcessor(matchers)]
            if temperature > 0:
                procs += [TemperatureLogitsWarper(temperature)] + ([TopPLogitsWarper(top_p)] if top_p < 1 else [])
                kwargs.update(do_sample=True, temperature=1.0, top_p=1.0, top_k=0)
            else:
                kwargs.update(do_sample=False, temperature=None, top_p=None)
            kwargs["logits_processor"] = LogitsProcessorList(procs)
        elif temperature > 0:
            kwargs.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=0)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None)
        if stop:
            kwargs.update(stop_strings=list(stop), tokenizer=self.tokenizer)
        kwargs.update(self._adapter_kwargs(adapters))
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.inference_mode():
            torch.manual_seed(seed)
            out = self.model.generate(input_ids=ids, attention_mask=mask, **kwargs)
        new = out[:, ids.shape[1]:].tolist()
        result = []
        for row in new:
            end = next((k + 1 for k, tok in enumerate(row) if tok in self._eos_ids), len(row))
            result.append(row[:end])
        return result

    def _variant_ids(self, choices: Sequence[str]) -> list[list[list[int]]]:
        """Token-id sequences per choice (deduplicated); two choices sharing a sequence is an error."""
        seen: dict[tuple[int, ...], str] = {}
        out = []
        for c in choices:
            seqs = []
            for v in choice_variants(c):
                ids = tuple(self.tokenizer(v, add_special_tokens=False)["input_ids"])
                if not ids or ids in [tuple(s) for s in seqs]:
                    continue
                if ids in seen and seen[ids] != c:
                    raise BackendError(f"choices {seen[ids]!r} and {c!r} tokenize identically; make them distinct")
                seen[ids] = c
                seqs.append(list(ids))
            out.append(seqs)
        return out

    def choice_probs(self, prompts: Sequence[Prompt], choices: Sequence[str] = ("Yes", "No"),
                     adapter: AdapterArg = None) -> np.ndarray:
        import torch

        if len(choices) < 2:
            raise BackendError(f"choice_probs needs at least two choices; got {list(choices)}")
        adapters = per_prompt_adapters(adapter, len(prompts))
        variants = self._variant_ids(choices)
        encoded = [self.encode_prompt(p) for p in prompts]
        mass = np.zeros((len(prompts), len(choices)))
        if all(len(s) == 1 for seqs in variants for s in seqs):
            # Fast path: every variant is one token, so one forward pass per batch reads all of them.
            for batch in self._batches([len(e) for e in encoded]):
                ids, mask = self._pad([encoded[i] for i in batch], side="left")
                logps = torch.log_softmax(self._logits(ids, mask, [adapters[i] for i in batch], keep=1)[:, -1], -1)
                for c, seqs in enumerate(variants):
                    tok = [s[0] for s in seqs]
                    mass[batch, c] = logps[:, tok].exp().sum(-1).cpu().numpy()
            return renormalise(mass)
        # Multi-token choices: P(choice) = Σ_variants Π_t p(token_t | prompt, tokens_<t).
        pairs = [(p, c, s) for p in range(len(prompts)) for c, seqs in enumerate(variants) for s in seqs]
        scored = self._score_ids([encoded[p] for p, _, _ in pairs], [s for _, _, s in pairs],
                                 [adapters[p] for p, _, _ in pairs])
        for (p, c, _), (total, _) in zip(pairs, scored, strict=True):
            mass[p, c] += float(np.exp(total))
        return renormalise(mass)

    def _score_ids(self, prompt_ids: list[list[int]], completion_ids: list[list[int]],
                   adapters: list[str | None]) -> list[tuple[float, list[float]]]:
        import torch

        rows = [p + c for p, c in zip(prompt_ids, completion_ids, strict=True)]
        out: list[tuple[float, list[float]] | None] = [None] * len(rows)
        for batch in self._batches([len(r) for r in rows]):
            # Left padding puts every completion at the end of its row, so only the last K positions need logits
            # (a full (B, T, V) tensor is ~1 GB for 16 rows of 300 tokens with a 49k vocabulary).
            ids, mask = self._pad([rows[i] for i in batch], side="left")
            k = max(len(completion_ids[i]) for i in batch) + 1
            logits = self._logits(ids, mask, [adapters[i] for i in batch], keep=k)  # (B, K, V)
            for j, i in enumerate(batch):
                comp = completion_ids[i]
                # The token at position t is predicted by the logits at t-1.
                rows_logits = logits[j, k - 1 - len(comp):k - 1]  # (L, V)
                target = torch.tensor(comp, device=rows_logits.device)[:, None]
                token_logps = torch.log_softmax(rows_logits, -1).gather(-1, target)[:, 0].tolist()
                out[i] = (float(sum(token_logps)), token_logps)
        return out  # type: ignore[return-value]

    def sequence_logprob(self, prompts: Sequence[Prompt], completions: Sequence[str],
                         adapter: AdapterArg = None) -> list[SequenceLogprob]:
        if len(prompts) != len(completions):
            raise BackendError(f"sequence_logprob: {len(prompts)} prompts but {len(completions)} completions")
        adapters = per_prompt_adapters(adapter, len(prompts))
        encoded = [self.encode_prompt(p) for p in prompts]
        comp_ids = [self.tokenizer(c, add_special_tokens=False)["input_ids"] for c in completions]
        results = []
        nonempty = [i for i, c in enumerate(comp_ids) if c]
        scored = dict(zip(nonempty, self._score_ids([encoded[i] for i in nonempty], [comp_ids[i] for i in nonempty],
                                                    [adapters[i] for i in nonempty]), strict=True))
        for i, ids in enumerate(comp_ids):
            total, token_logps = scored.get(i, (0.0, []))
            results.append(SequenceLogprob(total=total, token_logps=token_logps,
                                           tokens=self.tokenizer.convert_ids_to_tokens(ids)))
        return results


def eos_token_ids(model, tokenizer) -> set[int]:
    """The ids that end a generation: the model's generation config's and the tokenizer's."""
    config = getattr(model, "generation_config", None)
    eos = config.eos_token_id if config is not None else None
    eos = eos if isinstance(eos, list) else [eos]
    return {i for i in [*eos, tokenizer.eos_token_id] if i is not None}


def grammar_session_for(model, tokenizer):
    """A :class:`~reasonrec.llm.constraints.GrammarSession` over ``tokenizer`` at ``model``'s logits width (one
    per model: compiling is the cost, matchers are cheap); also for decode loops outside this backend (GRPO)."""
    from .constraints import GrammarSession

    width = model.get_output_embeddings().weight.shape[0]
    return GrammarSession.from_huggingface(tokenizer, vocab_size=width, stop_token_ids=eos_token_ids(model, tokenizer))


class ConstraintProcessor:
    """A transformers logits processor over per-row :class:`~reasonrec.llm.constraints.RowMatcher` states: each
    call first feeds every row the token it sampled last (rows without a constraint, or whose format is complete,
    are left alone), then masks the next-token scores (B, V) of the constrained rows in place. Also used outside
    this backend (GRPO rollouts, :mod:`reasonrec.train.grpo`): put it before any top-k / top-p warper, or a row
    can be left with no token.

    ``calls`` counts the decode steps it masked, so a caller can check it was applied at all."""

    def __init__(self, matchers: list):
        self.matchers = matchers
        self.started = False
        self.bits = None
        self.calls = 0

    @classmethod
    def for_constraints(cls, session, constraints, max_new_tokens: int) -> ConstraintProcessor:
        """One fresh matcher per row (``None`` = that row unconstrained) from a
        :class:`~reasonrec.llm.constraints.GrammarSession`."""
        return cls([session.matcher(c, "", max_new_tokens) if c is not None else None for c in constraints])

    def __call__(self, input_ids, scores):
        import torch

        self.calls += 1

        if self.bits is None:
            width = next(m.width for m in self.matchers if m is not None)
            self.bits = np.zeros((len(self.matchers), width), dtype=np.int32)
        if self.started:
            last = input_ids[:, -1].tolist()
            for m, tok in zip(self.matchers, last, strict=True):
                if m is not None and not m.done and not m.rejected:
                    m.accept(tok)  # a row cut by a stop string gets pad tokens: rejected, then ignored
        self.started = True
        rows = [i for i, m in enumerate(self.matchers) if m is not None and not m.done and not m.rejected]
        if not rows:
            return scores
        for i in rows:
            self.matchers[i].fill(self.bits, i)
        vocab = self.matchers[rows[0]].vocab.size
        allowed = np.unpackbits(self.bits[rows].view(np.uint8), axis=1, bitorder="little")[:, :vocab].astype(bool)
        idx = torch.tensor(rows, device=scores.device)
        sub = scores[idx]
        sub[:, :vocab] = sub[:, :vocab].masked_fill(~torch.from_numpy(allowed).to(scores.device), float("-inf"))
        sub[:, vocab:] = float("-inf")
        scores[idx] = sub
        return scores
