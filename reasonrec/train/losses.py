"""Loss functions of the trainers: tensors in, a scalar and per-example values out, no trainer state.

Shapes: B batch (prompts), K rejected completions per prompt, T tokens, V vocabulary.

- :func:`sequence_logps` — summed log-probability of the completion tokens (the one way we compute them; the
  same masking and summing as trl's DPO trainer).
- :func:`dpo_sigmoid_loss` — DPO (Rafailov et al. 2023, Eq. 7), trl's ``loss_type="sigmoid"``.
- :func:`sdpo_loss` — softmax-DPO with K negatives (TrackRec Eq. 4; S-DPO, Chen et al. 2024, Eq. 9).
- :func:`yes_no_bce_loss`, :func:`answer_lm_loss`, :func:`mixed_yes_no_loss` — ThinkRec Eq. 5-7.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def sequence_logps(logits: torch.Tensor, input_ids: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
    """Summed log π(completion | prompt) per row.

    Args:
        logits: (B, T, V) next-token logits of the model on ``input_ids``.
        input_ids: (B, T) prompt + completion (+ padding).
        completion_mask: (B, T) 1 on completion tokens, 0 on prompt and padding.

    Returns:
        (B,) Σ_t log p(x_t | x_<t) over completion positions t.
    """
    labels = input_ids[:, 1:]                                   # (B, T-1) token predicted at each position
    mask = completion_mask[:, 1:].to(logits.dtype)              # (B, T-1)
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)    # (B, T-1, V); fp32 for a stable logsumexp
    token_logps = logp.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    return (token_logps * mask).sum(-1)


def dpo_sigmoid_loss(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor, ref_chosen_logps: torch.Tensor,
                     ref_rejected_logps: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """DPO loss (Rafailov et al. 2023, Eq. 7): −log σ(β[(log πθ(yw) − log πref(yw)) − (log πθ(yl) − log πref(yl))]).

    All inputs (B,). Returns (mean loss, per-example loss (B,)). With πθ = πref the loss is log 2.
    """
    delta = (chosen_logps - ref_chosen_logps) - (rejected_logps - ref_rejected_logps)
    per_example = -F.logsigmoid(beta * delta)
    return per_example.mean(), per_example


def sdpo_loss(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor, ref_chosen_logps: torch.Tensor,
              ref_rejected_logps: torch.Tensor, beta: float,
              rejected_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax-DPO with K rejected completions (TrackRec Eq. 4; S-DPO Eq. 9):

        L = −log σ( −log Σ_d exp( β·(log πθ(d)/πref(d)) − β·(log πθ(p)/πref(p)) ) )

    where p is the chosen completion and d runs over the K rejected ones.

    Args:
        chosen_logps, ref_chosen_logps: (B,) summed log-probs of the chosen completion under policy / reference.
        rejected_logps, ref_rejected_logps: (B, K) the same for the rejected completions.
        beta: β of Eq. (4).
        rejected_mask: optional (B, K) bool, False for padding slots when prompts have different K.

    Returns:
        (mean loss over the batch, per-example loss (B,)).

    Notes:
        Computed in log space: −log σ(−z) = softplus(z) with z = logsumexp_d(β·(r_d − r_p)), so nothing is
        exponentiated outside a logsumexp. Unlike TrackRec's public code, exp is applied to log-ratios (not to
        probabilities), and the loss is taken per prompt and then averaged (not summed over the batch inside one
        log). With K = 1 it equals :func:`dpo_sigmoid_loss`; with πθ = πref it equals log(1 + K).
    """
    chosen_ratio = chosen_logps - ref_chosen_logps                       # (B,)
    rejected_ratio = rejected_logps - ref_rejected_logps                 # (B, K)
    margins = beta * (rejected_ratio - chosen_ratio.unsqueeze(-1))       # (B, K)
    if rejected_mask is not None:
        margins = margins.masked_fill(~rejected_mask.bool(), -math.inf)
    z = torch.logsumexp(margins, dim=-1)                                 # (B,)
    per_example = F.softplus(z)                                          # −log σ(−z)
    return per_example.mean(), per_example


def yes_no_bce_loss(yes_logits: torch.Tensor, no_logits: torch.Tensor | None,
                    labels: torch.Tensor) -> torch.Tensor:
    """BCE between the Yes score and the 0/1 label (ThinkRec Eq. 6; TALLRec, CoLLM), per example (B,).

    ``yes_logits`` / ``no_logits`` are (B,) next-token logits of "Yes" / "No" at the first answer position.
    With ``no_logits`` the score is logit(Yes) − logit(No) = log-odds of P(Yes | {Yes, No}); without, it is the raw
    Yes logit, as ThinkRec's and CoLLM's code.
    """
    score = yes_logits if no_logits is None else yes_logits - no_logits
    return F.binary_cross_entropy_with_logits(score.float(), labels.float(), reduction="none")


def answer_lm_loss(logits: torch.Tensor, input_ids: torch.Tensor, answer_mask: torch.Tensor) -> torch.Tensor:
    """Token-level cross-entropy on the answer tokens (ThinkRec Eq. 5), averaged per example: (B,)."""
    n_tokens = answer_mask[:, 1:].sum(-1).clamp(min=1)
    return -sequence_logps(logits, input_ids, answer_mask) / n_tokens


def mixed_yes_no_loss(bce: torch.Tensor, lm: torch.Tensor, bce_weight: torch.Tensor,
                      lm_weight: torch.Tensor) -> torch.Tensor:
    """ThinkRec Eq. 7: per example w_bce·L_bce + w_lm·L_lm, averaged over the batch.

    All inputs (B,); the weights depend on the instance type (reasoning: 0.1 / 0.9, label-only: 0.9 / 0.1 in
    ThinkRec's code). DEVIATION: ThinkRec applies one weight pair per batch (its batches hold one instance type);
    we weight per example, which is the same for such batches and also defined for mixed ones.
    """
    return (bce_weight * bce + lm_weight * lm).mean()
