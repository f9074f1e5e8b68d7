"""DIEN — Deep Interest Evolution Network (Zhou et al., AAAI 2019; code github.com/mouna99/dien).

Interest extractor: a GRU over the history (Eq. 1-4) with the auxiliary loss (Eq. 6): hidden state h_t must
tell the next clicked item e_{t+1} from a sampled item. Interest evolving: attention a_t = softmax(h_t W e_a)
(Eq. 12) drives the update gate of an AUGRU (Eq. 13-16); its last state joins every other field in the final
MLP (200-80).
DEVIATION: the paper samples negatives from the items the user did not click; we sample uniformly from all
items (the chance of hitting a history item is negligible at ML/Amazon scale).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ..layers import AUGRU, MLPBlock
from .base import CTRBase


class DIEN(CTRBase):
    history_field = False

    def __init__(self, fmap, cfg=None):
        super().__init__(fmap, cfg)
        c, d = self.cfg, self.item_dim
        self.gru = nn.GRU(d, d, batch_first=True)
        self.att_w = nn.Linear(d, d, bias=False)
        self.augru = AUGRU(d, d)
        self.aux_net = MLPBlock(2 * d, (100, 50), 1, act="sigmoid")  # DIEN code: 100-50 sigmoid
        self.mlp = MLPBlock(d + self.n_fields * c.embedding_dim, c.mlp_hidden, 1, act=c.seq_activation,
                            dropout=c.dropout)

    def forward(self, batch: dict) -> dict:
        mask = batch["hist_mask"]
        hist = self.hist_repr(batch)  # (B, L, d)
        lens = mask.sum(1).clamp_min(1).cpu()
        packed = pack_padded_sequence(hist, lens, batch_first=True, enforce_sorted=False)
        h, _ = self.gru(packed)
        h, _ = pad_packed_sequence(h, batch_first=True, total_length=hist.shape[1])  # (B, L, d)
        target = self.item_repr(batch["item_id"], batch["item_cats"])
        logits = (self.att_w(h) * target.unsqueeze(1)).sum(-1).masked_fill(~mask, float("-inf"))
        att = torch.nan_to_num(logits.softmax(-1), nan=0.0)  # (B, L)
        final = self.augru(h, att, mask)
        out = {"logit": self.mlp(torch.cat([final, self.fields(batch).flatten(1)], -1)).squeeze(-1)}
        if self.training and hist.shape[1] > 1:
            out["aux_loss"] = self.cfg.dien_aux_weight * self._aux_loss(h, hist, batch)
        return out

    def _aux_loss(self, h: torch.Tensor, hist: torch.Tensor, batch: dict) -> torch.Tensor:
        """Eq. 6: BCE of h_t against the next real item (label 1) and a uniformly sampled item (label 0)."""
        valid = (batch["hist_mask"][:, 1:]).float()  # positions t with a next item
        pos = hist[:, 1:]
        neg_ids = torch.randint(1, self.fmap.n_items + 1, batch["hist_item_ids"][:, 1:].shape, device=h.device)
        neg = self.item_repr(neg_ids, batch["item_cats"].new_zeros(*neg_ids.shape, batch["hist_cats"].shape[-1]))
        hs = h[:, :-1]
        p = self.aux_net(torch.cat([hs, pos], -1)).squeeze(-1)
        n = self.aux_net(torch.cat([hs, neg], -1)).squeeze(-1)
        bce = nn.functional.binary_cross_entropy_with_logits
        loss = bce(p, torch.ones_like(p), reduction="none") + bce(n, torch.zeros_like(n), reduction="none")
        return (loss * valid).sum() / valid.sum().clamp_min(1.0)
