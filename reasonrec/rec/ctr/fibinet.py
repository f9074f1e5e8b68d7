"""FiBiNET (Huang et al., RecSys 2019).

SENET re-weights the fields (Eq. 3-5); bilinear interaction (Eq. 6-8) runs on both the original and the
re-weighted embeddings; the two interaction sets are concatenated (combination layer) and fed to the MLP
(200-80) → logit, plus the first-order term of the paper's output layer (ŷ = σ(w_0 + Σ w_i x_i + y_d); here a
linear layer over the field embeddings, as our DeepFM).

DEVIATION: the MLP uses batch normalisation (``dnn_use_bn`` in DeepCTR, ``batch_norm`` in FuxiCTR). Why: every
bilinear output is a product of two embeddings, so with the small embedding init (1e-4) the MLP input is ~1e-8
and its ReLUs settle on their biases and die before the embeddings grow; on a planted-signal test the model
stayed at AUC 0.5 without it.
"""

from __future__ import annotations

import torch
from torch import nn

from ..layers import BilinearInteraction, MLPBlock, SENet
from .base import CTRBase


class FiBiNET(CTRBase):
    def __init__(self, fmap, cfg=None):
        super().__init__(fmap, cfg)
        c, f, d = self.cfg, self.n_fields, self.cfg.embedding_dim
        self.senet = SENet(f, c.senet_reduction)
        self.bilinear_p = BilinearInteraction(f, d, c.bilinear)
        self.bilinear_q = BilinearInteraction(f, d, c.bilinear)
        self.linear = nn.Linear(f * d, 1)
        self.mlp = MLPBlock(f * (f - 1) * d, c.mlp_hidden, 1, dropout=c.dropout, batch_norm=True)

    def forward(self, batch: dict) -> dict:
        e = self.fields(batch)
        v = self.senet(e)
        x = torch.cat([self.bilinear_p(e).flatten(1), self.bilinear_q(v).flatten(1)], dim=-1)
        return {"logit": (self.linear(e.flatten(1)) + self.mlp(x)).squeeze(-1)}
