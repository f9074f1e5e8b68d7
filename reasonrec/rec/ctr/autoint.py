"""AutoInt (Song et al., CIKM 2019; code github.com/DeepGraphLearning/RecommenderSystems/featureRec).

Fields (B, F, D) pass through ``autoint_layers`` interacting layers (multi-head self-attention with residual,
Eq. 5-8); the flattened output goes to a linear output layer (Eq. 9). ``autoint_dnn`` adds the parallel MLP of
AutoInt+.
"""

from __future__ import annotations

from torch import nn

from ..layers import MLPBlock, MultiHeadSelfAttention
from .base import CTRBase


class AutoInt(CTRBase):
    def __init__(self, fmap, cfg=None):
        super().__init__(fmap, cfg)
        c = self.cfg
        layers, d = [], c.embedding_dim
        for _ in range(c.autoint_layers):
            layers.append(MultiHeadSelfAttention(d, c.autoint_head_dim, c.autoint_heads))
            d = layers[-1].out_dim
        self.layers = nn.Sequential(*layers)
        self.out = nn.Linear(self.n_fields * d, 1)
        self.dnn = (MLPBlock(self.n_fields * c.embedding_dim, c.mlp_hidden, 1, dropout=c.dropout)
                    if c.autoint_dnn else None)

    def forward(self, batch: dict) -> dict:
        x = self.fields(batch)  # (B, F, D)
        logit = self.out(self.layers(x).flatten(1))
        if self.dnn is not None:
            logit = logit + self.dnn(x.flatten(1))
        return {"logit": logit.squeeze(-1)}
