"""Connectors: trainable maps from text-knowledge vectors (semantic space) to CTR feature fields (rec space).

Every connector takes k knowledge vectors [(B, d_1), ..., (B, d_k)] and returns (B, k, D) — k extra feature
fields of the backbone's embedding size D, which then interact like any other field.

- ``mlp`` (default): one MLP per field. R4ec Eq. 12 (F_u, F_i "implemented as a MLP") and TrackRec Sec. 3.4
  (connector M, "implemented as a MLP", which also reduces the dimension).
- ``moe``: per field, a softmax-gated mixture of MLP experts.
- ``hybrid``: KAR's hybrid-expert adaptor (Xi et al., "Towards Open-World Recommendation with Knowledge
  Augmentation from LLMs", RecSys 2024, Sec. 3.3): a set of shared experts used by every knowledge type plus
  experts specific to each type, mixed by a per-type softmax gate over (shared + own specific) experts. Shared
  experts need one input size, so every field must have the same d.

The registry :data:`CONNECTORS` is the one name → class table.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from .layers import MLPBlock


class MLPConnector(nn.Module):
    """One MLP per knowledge field: d_i → hidden → D."""

    def __init__(self, in_dims: list[int], out_dim: int, hidden: tuple[int, ...] = (128,), dropout: float = 0.0,
                 n_experts: int = 4, n_shared: int = 2):
        super().__init__()
        self.nets = nn.ModuleList([MLPBlock(d, hidden, out_dim, dropout=dropout) for d in in_dims])

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack([net(x) for net, x in zip(self.nets, xs, strict=True)], dim=1)  # (B, k, D)


class _Experts(nn.Module):
    """E expert MLPs of the same shape; forward gives (B, E, D)."""

    def __init__(self, n: int, in_dim: int, out_dim: int, hidden: tuple[int, ...], dropout: float):
        super().__init__()
        self.experts = nn.ModuleList([MLPBlock(in_dim, hidden, out_dim, dropout=dropout) for _ in range(n)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([e(x) for e in self.experts], dim=1)


class MoEConnector(nn.Module):
    """Per field: Σ_e softmax(W_g x)_e · expert_e(x) over ``n_experts`` MLP experts."""

    def __init__(self, in_dims: list[int], out_dim: int, hidden: tuple[int, ...] = (128,), dropout: float = 0.0,
                 n_experts: int = 4, n_shared: int = 2):
        super().__init__()
        self.experts = nn.ModuleList([_Experts(n_experts, d, out_dim, hidden, dropout) for d in in_dims])
        self.gates = nn.ModuleList([nn.Linear(d, n_experts) for d in in_dims])

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        outs = []
        for experts, gate, x in zip(self.experts, self.gates, xs, strict=True):
            g = gate(x).softmax(-1).unsqueeze(-1)  # (B, E, 1)
            outs.append((g * experts(x)).sum(1))  # (B, D)
        return torch.stack(outs, dim=1)


class HybridExpertConnector(nn.Module):
    """KAR's hybrid-expert adaptor: ``n_shared`` shared experts + ``n_experts`` specific experts per field."""

    def __init__(self, in_dims: list[int], out_dim: int, hidden: tuple[int, ...] = (128,), dropout: float = 0.0,
                 n_experts: int = 2, n_shared: int = 2):
        super().__init__()
        if len(set(in_dims)) > 1:
            raise ConfigError(f"connector 'hybrid': shared experts need every knowledge field to have the same "
                              f"size; got {in_dims}. Encode all fields with one encoder or use connector 'moe'")
        d = in_dims[0] if in_dims else 1
        self.shared = _Experts(n_shared, d, out_dim, hidden, dropout)
        self.specific = nn.ModuleList([_Experts(n_experts, d, out_dim, hidden, dropout) for _ in in_dims])
        self.gates = nn.ModuleList([nn.Linear(d, n_shared + n_experts) for _ in in_dims])

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        outs = []
        for specific, gate, x in zip(self.specific, self.gates, xs, strict=True):
            e = torch.cat([self.shared(x), specific(x)], dim=1)  # (B, S+E, D)
            g = gate(x).softmax(-1).unsqueeze(-1)
            outs.append((g * e).sum(1))
        return torch.stack(outs, dim=1)


CONNECTORS: dict[str, type[nn.Module]] = {
    "mlp": MLPConnector,
    "moe": MoEConnector,
    "hybrid": HybridExpertConnector,
}
