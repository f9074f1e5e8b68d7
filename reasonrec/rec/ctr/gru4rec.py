"""GRU4Rec as a CTR model (Hidasi et al., ICLR 2016): a GRU encodes the history; its last state is the user's
interest, concatenated with every other field (target, user, knowledge) in the final MLP (200-80) → logit.

DEVIATION: GRU4Rec is a next-item model trained with ranking losses; used as a CTR backbone (as the CTR papers'
baseline tables do) it scores (history, target) pairs with BCE. The next-item GRU4Rec lives in
``reasonrec.rec.baselines``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from ..layers import MLPBlock
from .base import CTRBase


class GRU4RecCTR(CTRBase):
    history_field = False

    def __init__(self, fmap, cfg=None):
        super().__init__(fmap, cfg)
        c, d = self.cfg, self.item_dim
        self.gru = nn.GRU(d, d, batch_first=True)
        self.mlp = MLPBlock(d + self.n_fields * c.embedding_dim, c.mlp_hidden, 1, dropout=c.dropout)

    def forward(self, batch: dict) -> dict:
        mask = batch["hist_mask"]
        lens = mask.sum(1)
        packed = pack_padded_sequence(self.hist_repr(batch), lens.clamp_min(1).cpu(), batch_first=True,
                                      enforce_sorted=False)
        _, h = self.gru(packed)
        h = h[-1] * (lens > 0).unsqueeze(-1).to(h.dtype)  # (B, d); empty history -> zero state
        return {"logit": self.mlp(torch.cat([h, self.fields(batch).flatten(1)], -1)).squeeze(-1)}
