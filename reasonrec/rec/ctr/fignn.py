"""FiGNN — Feature Interaction Graph Neural Networks (Li et al., CIKM 2019; code github.com/CRIPAC-DIG/GraphCTR).

Fields are nodes of a fully connected graph; ``fignn_steps`` rounds of attentional message passing with a GRU
update and residual (``reasonrec.rec.layers.FiGNNLayer``), then the attentional scoring layer (Eq. 9-10):
ŷ = Σ_i a_i · MLP_1(h_i) with a_i = MLP_2(h_i).
"""

from __future__ import annotations

from torch import nn

from ..layers import FiGNNLayer
from .base import CTRBase


class FiGNN(CTRBase):
    def __init__(self, fmap, cfg=None):
        super().__init__(fmap, cfg)
        d = self.cfg.embedding_dim
        self.gnn = FiGNNLayer(self.n_fields, d, self.cfg.fignn_steps)
        self.score = nn.Linear(d, 1)  # MLP_1: each node's own prediction
        self.weight = nn.Linear(d, 1)  # MLP_2: each node's importance

    def forward(self, batch: dict) -> dict:
        h = self.gnn(self.fields(batch))  # (B, F, D)
        logit = (self.weight(h) * self.score(h)).sum(1)  # (B, 1)
        return {"logit": logit.squeeze(-1)}
