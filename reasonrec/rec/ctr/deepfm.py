"""DeepFM (Guo et al., IJCAI 2017): ŷ = linear + FM second-order term + MLP, all on the same field embeddings.

DEVIATION: the first-order term is a linear layer over the flattened field embeddings (as torch-rechub's
DeepFM) instead of separate 1-d weights per feature value; it also gives knowledge fields a first-order term.
"""

from __future__ import annotations

from torch import nn

from ..layers import FMInteraction, MLPBlock
from .base import CTRBase


class DeepFM(CTRBase):
    def __init__(self, fmap, cfg=None):
        super().__init__(fmap, cfg)
        c = self.cfg
        dim = self.n_fields * c.embedding_dim
        self.linear = nn.Linear(dim, 1)
        self.fm = FMInteraction()
        self.mlp = MLPBlock(dim, c.mlp_hidden, 1, dropout=c.dropout)

    def forward(self, batch: dict) -> dict:
        x = self.fields(batch)
        flat = x.flatten(1)
        return {"logit": (self.linear(flat) + self.fm(x) + self.mlp(flat)).squeeze(-1)}
