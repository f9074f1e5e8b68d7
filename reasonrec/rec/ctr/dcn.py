"""DCN — Deep & Cross Network (Wang et al., ADKDD 2017), with DCN-V2's cross layer (Wang et al., WWW 2021) as
``dcn_version="v2"``. Cross network and MLP (200-80) run in parallel on the flattened fields; their outputs
are concatenated and a linear layer gives the logit (DCN Eq. 5)."""

from __future__ import annotations

import torch
from torch import nn

from ..layers import CrossNetV1, CrossNetV2, MLPBlock
from .base import CTRBase


class DCN(CTRBase):
    def __init__(self, fmap, cfg=None):
        super().__init__(fmap, cfg)
        c = self.cfg
        dim = self.n_fields * c.embedding_dim
        cross = CrossNetV1 if c.dcn_version == "v1" else CrossNetV2
        self.cross = cross(dim, c.cross_layers)
        self.deep = MLPBlock(dim, c.mlp_hidden, dropout=c.dropout)
        self.out = nn.Linear(dim + self.deep.out_dim, 1)

    def forward(self, batch: dict) -> dict:
        x0 = self.fields(batch).flatten(1)
        return {"logit": self.out(torch.cat([self.cross(x0), self.deep(x0)], -1)).squeeze(-1)}


class DCNv2(DCN):
    """DCN with the DCN-V2 cross layer (full-rank W, parallel structure)."""

    def __init__(self, fmap, cfg=None):
        from .base import CTRModelConfig

        cfg = (cfg or CTRModelConfig()).model_copy(update={"dcn_version": "v2"})
        super().__init__(fmap, cfg)
