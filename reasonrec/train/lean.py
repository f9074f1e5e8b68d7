"""The LM loss with logits only where the loss reads them.

A causal LM's forward applies the LM head to every position: for SmolLM2 (vocabulary 49,152) a batch of 4 × 629
tokens makes a (4, 629, 49152) fp32 tensor of 0.5 GB, plus as much again for its log-softmax and gradient, when
SFT's loss reads only the ~60 completion positions per row. Here the decoder runs alone (``get_decoder()``), the
hidden states of the positions that predict a completion token are gathered, and the head + cross-entropy run on
those rows only, in chunks under activation checkpointing, so at most ``chunk`` rows of logits exist at a time
(the same idea as Liger's fused linear cross-entropy and trl's ``add_fused_lm_head``, in plain torch).

The loss equals ``model(input_ids, attention_mask, labels=labels).loss`` (tested with gradients, to float32
rounding); models whose forward post-processes logits (Gemma-2 soft-capping, Cohere's ``logit_scale``) are
refused by :func:`supports_lean` so callers keep the plain path for them.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

IGNORE = -100


def _causal_lm(model):
    """The transformers ``*ForCausalLM`` under a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def supports_lean(model) -> bool:
    """Whether the model's logits are exactly ``lm_head(decoder(x))``, so the lean path gives the same loss.

    Not under several processes (``accelerate launch``, ``WORLD_SIZE`` > 1): the lean path runs the decoder of the
    unwrapped model, and a forward that bypasses the DDP / FSDP wrapper skips its gradient synchronisation (and
    FSDP's parameter gathering), so every process would train its own copy. Multi-GPU runs use the library loss."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return False
    lm = _causal_lm(model)
    cfg = lm.config
    post = getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "logit_scale", None) not in (None, 1, 1.0)
    return not post and hasattr(lm, "get_decoder") and lm.get_output_embeddings() is not None


def _logp_chunk(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor):
    logits = F.linear(hidden, weight, bias).float()                 # (n, V); fp32 for a stable logsumexp
    logps = logits.gather(-1, targets[:, None])[:, 0] - torch.logsumexp(logits, -1)
    return logps, logits.argmax(-1) == targets


def _logp_entropy_chunk(hidden, weight, bias, targets, temperature: float):
    logits = F.linear(hidden, weight, bias).float() / temperature  # (n, V)
    logp_all = torch.log_softmax(logits, -1)
    return logp_all.gather(-1, targets[:, None])[:, 0], -(logp_all.exp() * logp_all).sum(-1)


def selected_logps_entropy(hidden: torch.Tensor, head: torch.nn.Linear, targets: torch.Tensor,
                           temperature: float = 1.0, chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """As :func:`selected_logps` on ``head(hidden) / temperature``, with the entropy of each row's distribution
    instead of top-1 hits (what trl's GRPO reads): (log-probs (N,), entropies (N,))."""
    logps, ents = [], []
    for s in range(0, hidden.shape[0], chunk):
        h, t = hidden[s:s + chunk], targets[s:s + chunk]
        if torch.is_grad_enabled() and h.requires_grad:
            lp, ent = checkpoint(_logp_entropy_chunk, h, head.weight, head.bias, t, temperature, use_reentrant=False)
        else:
            lp, ent = _logp_entropy_chunk(h, head.weight, head.bias, t, temperature)
        logps.append(lp)
        ents.append(ent)
    if not logps:
        empty = hidden.new_zeros((0,), dtype=torch.float32)
        return empty, empty
    return torch.cat(logps), torch.cat(ents)


def selected_logps(hidden: torch.Tensor, head: torch.nn.Linear, targets: torch.Tensor,
                   chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(target) under ``head(hidden)`` per row, and whether the target is the argmax.

    Args:
        hidden: (N, H) hidden states of the positions whose next token is a target.
        head: the LM head (weight (V, H)).
        targets: (N,) token ids.
        chunk: rows of logits alive at a time; each chunk is recomputed in the backward pass instead of stored.

    Returns:
        (log-probs (N,) float32, top-1 hits (N,) bool).
    """
    logps, hits = [], []
    for s in range(0, hidden.shape[0], chunk):
        h, t = hidden[s:s + chunk], targets[s:s + chunk]
        if torch.is_grad_enabled() and h.requires_grad:
            lp, hit = checkpoint(_logp_chunk, h, head.weight, head.bias, t, use_reentrant=False)
        else:
            lp, hit = _logp_chunk(h, head.weight, head.bias, t)
        logps.append(lp)
        hits.append(hit)
    if not logps:
        return hidden.new_zeros((0,), dtype=torch.float32), torch.zeros((0,), dtype=torch.bool)
    return torch.cat(logps), torch.cat(hits)


def lean_token_logps(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, labels: torch.Tensor,
                     chunk: int = 1024, **forward_kwargs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token log-probs of the tokens whose label is not -100, the head run on those positions only.

    Args:
        model: a causal LM or a peft model around one.
        input_ids, attention_mask, labels: (B, T); ``labels`` is -100 outside the scored tokens (unshifted, as
            for ``model(labels=...)``).

    Returns:
        (log-probs (B, T-1) zero outside the scored tokens, the mask of scored positions (B, T-1),
        top-1 hits (B, T-1) bool).
    """
    lm = _causal_lm(model)
    out = lm.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **forward_kwargs)
    hidden = out.last_hidden_state[:, :-1]                          # (B, T-1, H) position t predicts token t+1
    shifted = labels[:, 1:]                                         # (B, T-1)
    keep = shifted != IGNORE
    logps, hits = selected_logps(hidden[keep], lm.get_output_embeddings(), shifted[keep], chunk)   # (N,)
    # masked_scatter keeps the graph connected even when no position is scored (a differentiable zero)
    full = torch.zeros(keep.shape, dtype=logps.dtype, device=logps.device).masked_scatter(keep, logps)
    full_hits = torch.zeros(keep.shape, dtype=torch.bool, device=keep.device).masked_scatter(keep, hits)
    return full, keep, full_hits


def lean_completion_logps(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, logits_to_keep: int,
                          temperature: float = 1.0, chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """trl GRPO's per-token log-probs and entropies of the last ``logits_to_keep`` tokens (the completions),
    the head run on those positions only: ((B, K), (B, K)), zero where ``attention_mask`` is 0."""
    lm = _causal_lm(model)
    out = lm.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    k = logits_to_keep
    hidden = out.last_hidden_state[:, -k - 1:-1]                    # (B, K, H) predicts the last K tokens
    targets = input_ids[:, -k:]                                     # (B, K)
    keep = attention_mask[:, -k:].bool()
    logps, ents = selected_logps_entropy(hidden[keep], lm.get_output_embeddings(), targets[keep], temperature, chunk)
    zeros = torch.zeros(keep.shape, dtype=logps.dtype, device=logps.device)
    return zeros.masked_scatter(keep, logps), zeros.masked_scatter(keep, ents)


def lean_lm_loss(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, labels: torch.Tensor,
                 num_items_in_batch: int | torch.Tensor | None = None, chunk: int = 1024,
                 **forward_kwargs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Causal-LM cross-entropy on the tokens whose label is not -100 (see :func:`lean_token_logps`).

    The loss is the sum over those tokens divided by ``num_items_in_batch`` (the Trainer's token count over the
    whole accumulated batch, as transformers' ``ForCausalLMLoss``), or their mean when it is ``None``.

    Returns:
        (loss (), {"n_tokens": (), "n_correct": ()}).
    """
    logps, keep, hits = lean_token_logps(model, input_ids, attention_mask, labels, chunk, **forward_kwargs)
    n_tokens = keep.sum()
    denom = num_items_in_batch if num_items_in_batch is not None else n_tokens.clamp(min=1)
    if isinstance(denom, torch.Tensor):
        denom = denom.to(logps.device)
    return -logps.sum() / denom, {"n_tokens": n_tokens, "n_correct": hits.sum()}
