"""FiBiNET (Huang et al., RecSys 2019).

SENET re-weights the fields (Eq. 3-5); bilinear interaction (Eq. 6-8) runs on both the original and the
re-weighted embeddings; the two interaction sets are concatenated (combination layer) and fed to the MLP
(200-80) → logit.
"""

from __future__ import annotations

import torch

from ..layers import BilinearInteraction, MLPBlock, SENet
from .base import CTRBase


class FiBiNET(CTRBase):
    def __init__(self, fmap, cfg=None):
        super().__init__(fmap, cfg)
        c, f, d = self.cfg, self.n_fields, self.cfg.embedding_dim
        self.senet = SENet(f, c.senet_reduction)
        self.bilinear_p = BilinearInteraction(f, d, c.bilinear)
        self.bilinear_q = BilinearInteraction(f, d, c.bilinear)
        self.mlp = MLPBlock(f * (f - 1) * d, c.mlp_hidden, 1, dropout=c.dropout)

    def forward(self, batch: dict) -> dict:
        e = self.fields(batch)
        v = self.senet(e)
        x = torch.cat([self.bilinear_p(e).flatten(1), self.bilinear_q(v).flatten(1)], dim=-1)
        return {"logit": self.mlp(x).squeeze(-1)}
