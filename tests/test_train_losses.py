"""Loss functions and reward functions, checked by hand on tiny tensors and by their invariants."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from reasonrec.train.grpo import memory_update_reward, rank_reward, rank_to_reward, target_rank, yes_reward
from reasonrec.train.losses import (
    answer_lm_loss,
    dpo_sigmoid_loss,
    mixed_yes_no_loss,
    sdpo_loss,
    sequence_logps,
    yes_no_bce_loss,
)
from reasonrec.train.yesno import LABEL, REASON, mix_kinds


def test_sdpo_is_log_1_plus_k_when_policy_equals_reference():
    torch.manual_seed(0)
    for k in (1, 3, 9):
        chosen, rejected = torch.randn(4) * 5, torch.randn(4, k) * 5
        loss, per = sdpo_loss(chosen, rejected, chosen.clone(), rejected.clone(), beta=0.1)
        torch.testing.assert_close(per, torch.full((4,), math.log(1 + k)))


def test_sdpo_with_one_rejected_equals_dpo_sigmoid():
    torch.manual_seed(1)
    c, r, rc, rr = (torch.randn(6) * 3 for _ in range(4))
    s, s_per = sdpo_loss(c, r.unsqueeze(1), rc, rr.unsqueeze(1), beta=0.1)
    d, d_per = dpo_sigmoid_loss(c, r, rc, rr, beta=0.1)
    torch.testing.assert_close(s_per, d_per, atol=1e-7, rtol=0)


def test_sdpo_by_hand_and_padding_mask():
    # one prompt, β = 0.5: chosen log-ratio 1, rejected log-ratios 0 and 2
    chosen, ref_chosen = torch.tensor([1.0]), torch.tensor([0.0])
    rejected, ref_rejected = torch.tensor([[0.0, 2.0]]), torch.tensor([[0.0, 0.0]])
    expected = -math.log(1 / (1 + math.exp(0.5 * (0 - 1)) + math.exp(0.5 * (2 - 1))))
    _, per = sdpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=0.5)
    assert float(per) == pytest.approx(expected, rel=1e-6)
    # a padded third slot must not count, whatever its value
    padded = torch.tensor([[0.0, 2.0, 100.0]])
    mask = torch.tensor([[True, True, False]])
    _, per_pad = sdpo_loss(chosen, padded, ref_chosen, torch.zeros(1, 3), beta=0.5, rejected_mask=mask)
    assert float(per_pad) == pytest.approx(expected, rel=1e-6)
    # per prompt, then averaged — not one log over the batch sum (a TrackRec-code bug)
    two, per_two = sdpo_loss(chosen.repeat(2), rejected.repeat(2, 1), ref_chosen.repeat(2), ref_rejected.repeat(2, 1), 0.5)
    assert float(two) == pytest.approx(expected, rel=1e-6)


def test_sequence_logps_matches_naive_and_ignores_prompt_and_padding():
    torch.manual_seed(2)
    logits = torch.randn(2, 5, 11)
    ids = torch.randint(0, 11, (2, 5))
    mask = torch.tensor([[0, 0, 1, 1, 0], [0, 1, 1, 1, 1]])
    naive = []
    for b in range(2):
        lp = F.log_softmax(logits[b], -1)
        naive.append(sum(lp[t - 1, ids[b, t]] for t in range(1, 5) if mask[b, t]))
    torch.testing.assert_close(sequence_logps(logits, ids, mask), torch.stack(naive))
    torch.testing.assert_close(answer_lm_loss(logits, ids, mask), -torch.stack(naive) / torch.tensor([2.0, 4.0]))


def test_yes_no_bce_and_mixed_weights():
    yes, no = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 3.0])
    labels = torch.tensor([1, 0])
    bce = yes_no_bce_loss(yes, no, labels)
    torch.testing.assert_close(bce, torch.tensor([-math.log(torch.sigmoid(torch.tensor(2.0))),
                                                  -math.log(1 - torch.sigmoid(torch.tensor(-3.0)))]))
    raw = yes_no_bce_loss(yes, None, labels)  # ThinkRec's code: the raw Yes logit
    torch.testing.assert_close(raw[1], torch.tensor(math.log(2)))
    lm = torch.tensor([5.0, 7.0])
    w = torch.tensor([[0.1, 0.9], [0.9, 0.1]])[torch.tensor([REASON, LABEL])]
    total = mixed_yes_no_loss(bce, lm, w[:, 0], w[:, 1])
    assert float(total) == pytest.approx(float((0.1 * bce[0] + 0.9 * 5 + 0.9 * bce[1] + 0.1 * 7) / 2))


def test_mix_kinds_keeps_labels_and_hits_the_reason_share():
    recs = [{"kind": LABEL, "i": i} for i in range(80)] + [{"kind": REASON, "i": i} for i in range(5)]
    mixed = mix_kinds(recs, 0.2, seed=0)
    assert sum(r["kind"] == LABEL for r in mixed) == 80
    assert sum(r["kind"] == REASON for r in mixed) == 20  # 20 / 100 = 0.2, drawn with replacement from 5
    assert mix_kinds(recs, None, 0) is recs


@pytest.mark.parametrize(("rank", "reward"), [(1, 1.0), (2, 0.5), (5, 0.5), (6, 0.0), (10, 0.0), (11, -0.5),
                                              (20, -0.5), (21, -1.0), (None, -1.0)])
def test_starec_rank_reward_table(rank, reward):
    assert rank_to_reward(rank) == reward


def test_rank_reward_parses_lists_and_chat_completions():
    text = "Here is my ranking:\n1. Heat (1995)\n2. alien (1979)\n3) Up\n"
    cands = ["Up", "Alien (1979)", "Heat (1995)"]
    assert target_rank(text, "Alien (1979)", cands) == 2
    assert target_rank("I cannot decide.", "Alien (1979)", cands) is None
    chat = [[{"role": "assistant", "content": text}]]
    assert rank_reward([text, "no list", chat[0]], target_title=["Heat (1995)", "Heat (1995)", "Up"],
                       candidates=[cands, cands, "\n".join(cands)]) == [1.0, -1.0, 0.5]
    assert yes_reward(["Yes, surely", "no", " YES.", "Maybe yes"]) == [1.0, 0.0, 1.0, 0.0]


def test_memory_update_reward_ranks_with_the_new_memory():
    seen = []

    def rank_with_memory(memory, row):
        seen.append((memory, row["target_title"]))
        return 1 if "sci-fi" in memory else 15

    fn = memory_update_reward(rank_with_memory)
    out = fn(prompts=["p1", "p2"], completions=["likes sci-fi", "likes romance"], target_title=["Alien", "Alien"])
    assert out == [1.0, -0.5] and seen[0] == ("likes sci-fi", "Alien")
