"""Scoring and generation with soft tokens in the prompt (CoLLM / ThinkRec §3.1, Eq. 2), transformers backend.

A prompt names each collaborative embedding by a *placeholder* token (default: the tokenizer's unk token, as the
Yes/No trainer's ``soft_token`` section). Before the forward pass the placeholder rows of the input embeddings are
replaced by ``projector(v)`` — the same computation as :meth:`reasonrec.train.yesno.YesNoTrainer.input_embeds`,
so a model scores exactly as it was trained. Prompts without vectors (``None``) score as plain text.

:class:`SoftTokenLLM` wraps a loaded :class:`~reasonrec.llm.hf.TransformersLLM` (``llm.with_soft_tokens``) and
reuses its prompt formatting, length-sorted batching and left padding:

- :meth:`~SoftTokenLLM.answer_logits` — raw logits of a few token ids at the first answer position (what the
  Yes/No BCE is trained on; ThinkRec's ``yes_logit`` score or logit(Yes) − logit(No));
- :meth:`~SoftTokenLLM.choice_probs` — the interface's ``choice_probs`` (single-token variants, renormalised);
- :meth:`~SoftTokenLLM.generate` — greedy or sampled text after the prompt (a reason on request).

``adapter`` is a name (peft mixed batch, as the backend), ``None`` (base) or :data:`ACTIVE`: call the model as
it is, so the caller's context decides — ``set_adapter``, or :func:`reasonrec.train.experts.expert_mixture`
with per-row weights. ``batch_context(indices)`` is entered around every batch with the prompt indices of its
rows, in row order (batches are sorted by length, so per-row weights must be looked up per batch).

Not cached: the soft vectors are not part of a cache key. Callers that need resumption keep the outputs in a
stage (scoring is one forward pass per prompt).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..errors import BackendError
from .base import Prompt, renormalise

ACTIVE = "__active__"  # adapter argument: leave the peft model's active adapter / hooks in charge


class SoftTokenLLM:
    """A transformers LLM that injects ``projector(vectors)`` at the placeholder tokens of each prompt
    (``projector=None``: text prompts only, scored through the same path)."""

    def __init__(self, llm, projector, placeholder: str | None = None):
        import torch

        self.llm = llm
        self.projector = None if projector is None else projector.to(llm.device).eval()
        ph = placeholder or llm.tokenizer.unk_token
        if ph is None:
            raise BackendError("soft tokens: the tokenizer has no unk token; name a placeholder token")
        ids = llm.tokenizer(ph, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise BackendError(f"soft tokens: placeholder {ph!r} is {len(ids)} tokens; it must be one token")
        self.placeholder, self.placeholder_id = ph, ids[0]
        self._dtype = None if projector is None else next(self.projector.parameters()).dtype
        self._torch = torch

    # ------------------------------------------------------------------------------------------ inputs

    def _embeds(self, ids, rows_soft: list[np.ndarray | None]):
        """Input embeddings (B, T, H) with the placeholder rows replaced, in row-major order."""
        torch = self._torch
        emb = self.llm.model.get_input_embeddings()(ids)
        where = ids == self.placeholder_id
        vecs = [np.asarray(v, dtype=np.float32).reshape(-1, np.shape(v)[-1]) for v in rows_soft if v is not None]
        counts = where.sum(-1).tolist()
        for j, (v, c) in enumerate(zip(rows_soft, counts, strict=True)):
            want = 0 if v is None else np.asarray(v).reshape(-1, np.shape(v)[-1]).shape[0]
            if c != want:
                raise BackendError(f"soft tokens: prompt row {j} has {c} placeholder token(s) but {want} vector(s)")
        if not vecs:
            return emb
        if self.projector is None:
            raise BackendError("soft tokens: vectors given but no projector (with_soft_tokens(projector=None))")
        with torch.inference_mode():
            proj = self.projector(torch.from_numpy(np.concatenate(vecs)).to(emb.device, self._dtype)).to(emb.dtype)
        return emb.masked_scatter(where.unsqueeze(-1).expand_as(emb), proj)

    def _prepare(self, prompts: Sequence[Prompt], soft: Sequence[Any] | None) -> tuple[list[list[int]], list]:
        if soft is not None and len(soft) != len(prompts):
            raise BackendError(f"soft tokens: {len(soft)} vector sets for {len(prompts)} prompts")
        return [self.llm.encode_prompt(p) for p in prompts], list(soft) if soft is not None else [None] * len(prompts)

    def _adapter_kwargs(self, adapter, rows: int) -> dict[str, Any]:
        if adapter == ACTIVE:
            return {}
        return self.llm._adapter_kwargs([adapter] * rows)

    # ------------------------------------------------------------------------------------------ scoring

    def _last_logits(self, prompts, soft, adapter, batch_context):
        """Yields (batch indices, logits (b, V) at the position after each prompt) per length-sorted batch."""
        torch = self._torch
        encoded, soft = self._prepare(prompts, soft)
        for batch in self.llm._batches([len(e) for e in encoded]):
            ids, mask = self.llm._pad([encoded[i] for i in batch], side="left")
            ctx = batch_context(batch) if batch_context else contextlib.nullcontext()
            with ctx, torch.inference_mode():
                embeds = self._embeds(ids, [soft[i] for i in batch])
                position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
                out = self.llm.model(inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids,
                                     logits_to_keep=1, **self._adapter_kwargs(adapter, len(batch)))
            yield batch, out.logits[:, -1].float()

    def answer_logits(self, prompts: Sequence[Prompt], soft: Sequence[Any] | None, token_ids: Sequence[int],
                      adapter: str | None = None,
                      batch_context: Callable[[list[int]], Any] | None = None) -> np.ndarray:
        """Logits (N, len(token_ids)) at the position after each prompt (one forward pass per batch)."""
        out = np.zeros((len(prompts), len(token_ids)), dtype=np.float64)
        for batch, logits in self._last_logits(prompts, soft, adapter, batch_context):
            out[batch] = logits[:, list(token_ids)].cpu().numpy()
        return out

    def choice_probs(self, prompts: Sequence[Prompt], soft: Sequence[Any] | None,
                     choices: Sequence[str] = ("Yes", "No"), adapter: str | None = None,
                     batch_context: Callable[[list[int]], Any] | None = None) -> np.ndarray:
        """As :meth:`LLM.choice_probs`: each choice's next-token mass summed over its surface variants, renormalised
        over the choices. Single-token variants only (Yes / No on every tokenizer we ship)."""
        variants = self.llm._variant_ids(choices)
        if any(len(s) != 1 for seqs in variants for s in seqs):
            raise BackendError(f"soft tokens: choice_probs supports single-token choices only; got {list(choices)}")
        mass = np.zeros((len(prompts), len(choices)))
        for batch, logits in self._last_logits(prompts, soft, adapter, batch_context):
            logps = self._torch.log_softmax(logits, -1)
            for c, seqs in enumerate(variants):
                mass[batch, c] = logps[:, [s[0] for s in seqs]].exp().sum(-1).cpu().numpy()
        return renormalise(mass)

    # ------------------------------------------------------------------------------------------ generation

    def generate(self, prompts: Sequence[Prompt], soft: Sequence[Any] | None, max_new_tokens: int = 64,
                 temperature: float = 0.0, seed: int = 0, adapter: str | None = None,
                 batch_context: Callable[[list[int]], Any] | None = None) -> list[str]:
        """One completion per prompt, decoded without special tokens (KV-cached ``generate`` on the embeddings)."""
        torch = self._torch
        encoded, soft = self._prepare(prompts, soft)
        texts: list[str] = [""] * len(prompts)
        eos = sorted(self.llm._eos_ids)
        for batch in self.llm._batches([len(e) for e in encoded]):
            ids, mask = self.llm._pad([encoded[i] for i in batch], side="left")
            kw: dict[str, Any] = dict(max_new_tokens=max_new_tokens, pad_token_id=self.llm.tokenizer.pad_token_id,
                                      eos_token_id=eos or None)
            if temperature > 0:
                kw.update(do_sample=True, temperature=temperature, top_k=0)
            else:
                kw.update(do_sample=False, temperature=None, top_p=None)
            ctx = batch_context(batch) if batch_context else contextlib.nullcontext()
            with ctx, torch.random.fork_rng(devices=[]), torch.inference_mode():
                torch.manual_seed(seed)
                embeds = self._embeds(ids, [soft[i] for i in batch])
                # with inputs_embeds only, generate returns just the new tokens
                new = self.llm.model.generate(inputs_embeds=embeds, attention_mask=mask,
                                              **kw, **self._adapter_kwargs(adapter, len(batch)))
            for j, i in enumerate(batch):
                texts[i] = self.llm.tokenizer.decode(new[j], skip_special_tokens=True).strip()
        return texts


def choice_token_ids(tokenizer, choices: Sequence[str]) -> list[int]:
    """The single token of each choice as written (the Yes/No trainer's ``yes_token`` / ``no_token``)."""
    out = []
    for c in choices:
        ids = tokenizer(c, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise BackendError(f"choice {c!r} is {len(ids)} tokens for this tokenizer; it must be one token")
        out.append(ids[0])
    return out


__all__ = ["ACTIVE", "SoftTokenLLM", "choice_token_ids"]
