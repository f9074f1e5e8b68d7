"""DIN — Deep Interest Network (Zhou et al., KDD 2018; authors' code github.com/zhougr1993/DeepInterestNetwork).

The target item [item ; category] attends over the history (local activation unit, Eq. 3; softmax-normalised
by default, a DEVIATION explained at ``CTRModelConfig.attention_softmax``); the
pooled interest is concatenated with every other field (user, target, demographics, knowledge fields) and fed
to the final MLP (200-80; ReLU by default, Dice as in the paper with ``seq_activation='dice'``) → logit.
"""

from __future__ import annotations

import torch

from ..layers import DINAttention, MLPBlock
from .base import CTRBase


class DIN(CTRBase):
    history_field = False

    def __init__(self, fmap, cfg=None):
        super().__init__(fmap, cfg)
        c = self.cfg
        self.attention = DINAttention(self.item_dim, c.attention_hidden, act=c.seq_activation,
                                      softmax=c.attention_softmax)
        self.mlp = MLPBlock(self.item_dim + self.n_fields * c.embedding_dim, c.mlp_hidden, 1,
                            act=c.seq_activation, dropout=c.dropout)

    def forward(self, batch: dict) -> dict:
        target = self.item_repr(batch["item_id"], batch["item_cats"])  # (B, 2D)
        interest = self.attention(self.hist_repr(batch), target, batch["hist_mask"])  # (B, 2D)
        x = torch.cat([interest, self.fields(batch).flatten(1)], dim=-1)
        return {"logit": self.mlp(x).squeeze(-1)}
