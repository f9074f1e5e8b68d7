"""Shared building blocks of the CTR backbones (``reasonrec.rec.ctr``).

Every model composes these blocks; none of them owns data, an optimizer or a device. Shapes use
B = batch, F = number of feature fields, D = embedding size, L = history length, H = attention heads.

Why our own blocks: the issue notes that no maintained library has the eight backbones with a trainable
text-vector field on today's stack (FuxiCTR's wheel lacks the zoo, DeepCTR-Torch feeds dense features only to the
final MLP, RecBole 1.2 breaks on current numpy/torch). The block split follows FuxiCTR's ``pytorch/layers``
(MLP_Block, FeatureEmbedding, FactorizationMachine, CrossNet, DIN attention, BilinearInteraction, SENET); the code
is written from the papers cited on each block.
"""

from __future__ import annotations

import math

import torch
from torch import nn

# ---------------------------------------------------------------------------------------------------------------
# Activations and MLP
# ---------------------------------------------------------------------------------------------------------------


class Dice(nn.Module):
    """Data-adaptive activation of DIN (Zhou et al., KDD 2018, Eq. 9).

    f(s) = p(s)·s + (1 - p(s))·α·s with p(s) = sigmoid(BN(s)); BN without affine parameters, as in the paper.
    """

    def __init__(self, dim: int, eps: float = 1e-8):
        super().__init__()
        self.bn = nn.BatchNorm1d(dim, eps=eps, affine=False)
        self.alpha = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])  # BatchNorm1d wants (N, C)
        p = torch.sigmoid(self.bn(flat)).reshape(shape)
        return x * (self.alpha + p * (1 - self.alpha))  # = p·x + (1 − p)·α·x with fewer full-size ops


def activation(name: str, dim: int) -> nn.Module:
    if name == "relu":
        return nn.ReLU()
    if name == "prelu":
        return nn.PReLU(dim)
    if name == "dice":
        return Dice(dim)
    if name == "sigmoid":
        return nn.Sigmoid()
    raise ValueError(f"unknown activation {name!r}; use relu, prelu, dice or sigmoid")


class MLPBlock(nn.Module):
    """Linear → (BatchNorm) → activation → dropout, repeated; an optional final Linear to ``out_dim``."""

    def __init__(self, in_dim: int, hidden: tuple[int, ...] | list[int], out_dim: int | None = None,
                 act: str = "relu", dropout: float = 0.0, batch_norm: bool = False):
        super().__init__()
        layers: list[nn.Module] = []
        d = in_dim
        for h in hidden:
            layers.append(nn.Linear(d, h))
            if batch_norm:
                layers.append(nn.BatchNorm1d(h))
            layers.append(activation(act, h))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            d = h
        if out_dim is not None:
            layers.append(nn.Linear(d, out_dim))
            d = out_dim
        self.net = nn.Sequential(*layers)
        self.out_dim = d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


# ---------------------------------------------------------------------------------------------------------------
# Pooling helpers
# ---------------------------------------------------------------------------------------------------------------


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int) -> torch.Tensor:
    """Mean of ``x`` over ``dim`` where ``mask`` (broadcastable bool/float) is set; 0 where nothing is set."""
    m = mask.to(x.dtype).unsqueeze(-1)
    return (x * m).sum(dim) / m.sum(dim).clamp_min(1.0)


# ---------------------------------------------------------------------------------------------------------------
# Target attention (DIN) and AUGRU (DIEN)
# ---------------------------------------------------------------------------------------------------------------


class DINAttention(nn.Module):
    """DIN's local activation unit (Zhou et al., KDD 2018, Eq. 3 and Fig. 2).

    w_j = MLP([e_j, v_a, e_j − v_a, e_j ⊙ v_a]); output Σ_j w_j e_j over the valid history positions.
    Weights are not softmax-normalised, as in the paper ("to reserve the intensity of user interests"), unless
    ``softmax=True`` (DIEN uses the softmax-normalised scores as AUGRU update gates).
    """

    def __init__(self, dim: int, hidden: tuple[int, ...] = (80, 40), act: str = "dice", softmax: bool = False):
        super().__init__()
        self.mlp = MLPBlock(4 * dim, hidden, out_dim=1, act=act)
        self.softmax = softmax

    def scores(self, hist: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # hist (B, L, d), target (B, d), mask (B, L) -> (B, L)
        # Why not concatenate [e_j, v_a, e_j − v_a, e_j ⊙ v_a] and apply the first Linear: with W = [W1 W2 W3 W4]
        # that equals e_j(W1 + W3)ᵀ + (e_j ⊙ v_a)W4ᵀ + v_a(W2 − W3)ᵀ + b, whose target term is computed once per
        # row instead of once per history position — the same function with the same parameters, about half
        # the work of the widest layer (see test_din_attention_matches_concat_form).
        first = self.mlp.net[0]
        w1, w2, w3, w4 = first.weight.split(hist.shape[-1], dim=1)  # each (H1, d)
        t = target.unsqueeze(1)  # (B, 1, d)
        z = torch.cat([hist, hist * t], dim=-1) @ torch.cat([w1 + w3, w4], dim=1).T  # (B, L, H1)
        z = z + (target @ (w2 - w3).T + first.bias).unsqueeze(1)
        w = self.mlp.net[1:](z).squeeze(-1)
        if self.softmax:
            w = w.masked_fill(~mask, float("-inf")).softmax(dim=-1)
            return torch.nan_to_num(w, nan=0.0)  # an all-padding history gives NaN rows
        return w * mask.to(w.dtype)

    def forward(self, hist: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        w = self.scores(hist, target, mask)  # (B, L)
        return (w.unsqueeze(-1) * hist).sum(1)  # (B, d)


class AUGRUCell(nn.Module):
    """GRU with attentional update gate (DIEN, Zhou et al., AAAI 2019, Eq. 13-16): u'_t = a_t · u_t."""

    def __init__(self, in_dim: int, hidden: int):
        super().__init__()
        self.x2h = nn.Linear(in_dim, 3 * hidden)
        self.h2h = nn.Linear(hidden, 3 * hidden, bias=False)

    def forward(self, x: torch.Tensor, h: torch.Tensor, att: torch.Tensor) -> torch.Tensor:
        xu, xr, xn = self.x2h(x).chunk(3, dim=-1)
        hu, hr, hn = self.h2h(h).chunk(3, dim=-1)
        u = torch.sigmoid(xu + hu) * att.unsqueeze(-1)
        r = torch.sigmoid(xr + hr)
        n = torch.tanh(xn + r * hn)
        return (1 - u) * h + u * n


class AUGRU(nn.Module):
    """Runs :class:`AUGRUCell` over a right-padded sequence; padded steps leave the state unchanged."""

    def __init__(self, in_dim: int, hidden: int):
        super().__init__()
        self.cell = AUGRUCell(in_dim, hidden)
        self.hidden = hidden

    def forward(self, x: torch.Tensor, att: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # x (B, L, d), att (B, L), mask (B, L) -> final state (B, hidden)
        h = x.new_zeros(x.shape[0], self.hidden)
        m = mask.to(x.dtype)
        for t in range(x.shape[1]):
            h_new = self.cell(x[:, t], h, att[:, t])
            h = m[:, t : t + 1] * h_new + (1 - m[:, t : t + 1]) * h
        return h


# ---------------------------------------------------------------------------------------------------------------
# Field-interaction blocks
# ---------------------------------------------------------------------------------------------------------------


class MultiHeadSelfAttention(nn.Module):
    """AutoInt's interacting layer (Song et al., CIKM 2019, Eq. 5-8): multi-head self-attention over fields with
    a residual projection and ReLU."""

    def __init__(self, in_dim: int, head_dim: int = 32, heads: int = 2, residual: bool = True):
        super().__init__()
        out = head_dim * heads
        self.heads, self.head_dim = heads, head_dim
        self.q = nn.Linear(in_dim, out, bias=False)
        self.k = nn.Linear(in_dim, out, bias=False)
        self.v = nn.Linear(in_dim, out, bias=False)
        self.res = nn.Linear(in_dim, out, bias=False) if residual else None
        self.out_dim = out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, f, _ = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:  # (B, F, H*hs) -> (B, H, F, hs)
            return t.view(b, f, self.heads, self.head_dim).transpose(1, 2)

        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        att = (q @ k.transpose(-1, -2)).softmax(dim=-1)  # (B, H, F, F); AutoInt uses no 1/sqrt(d) scaling
        y = (att @ v).transpose(1, 2).reshape(b, f, -1)  # (B, F, H*hs)
        if self.res is not None:
            y = y + self.res(x)
        return torch.relu(y)


class CrossNetV1(nn.Module):
    """DCN cross network (Wang et al., ADKDD 2017, Eq. 3): x_{l+1} = x_0 (x_lᵀ w_l) + b_l + x_l."""

    def __init__(self, dim: int, layers: int = 3):
        super().__init__()
        self.w = nn.ParameterList([nn.Parameter(torch.randn(dim) / math.sqrt(dim)) for _ in range(layers)])
        self.b = nn.ParameterList([nn.Parameter(torch.zeros(dim)) for _ in range(layers)])

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for w, b in zip(self.w, self.b, strict=True):
            x = x0 * (x @ w).unsqueeze(-1) + b + x
        return x


class CrossNetV2(nn.Module):
    """DCN-V2 cross network (Wang et al., WWW 2021, Eq. 1): x_{l+1} = x_0 ⊙ (W_l x_l + b_l) + x_l."""

    def __init__(self, dim: int, layers: int = 3):
        super().__init__()
        self.lin = nn.ModuleList([nn.Linear(dim, dim) for _ in range(layers)])

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for lin in self.lin:
            x = x0 * lin(x) + x
        return x


class FMInteraction(nn.Module):
    """Second-order FM term (Rendle, ICDM 2010): ½ Σ_k [(Σ_i v_ik)² − Σ_i v_ik²] over fields (B, F, D) → (B, 1)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        square_of_sum = x.sum(1).pow(2)
        sum_of_square = x.pow(2).sum(1)
        return 0.5 * (square_of_sum - sum_of_square).sum(-1, keepdim=True)


class SENet(nn.Module):
    """FiBiNET's squeeze-excitation over fields (Huang et al., RecSys 2019, Eq. 3-5): mean-pool each field,
    two ReLU FC layers with reduction ratio r, re-weight the fields."""

    def __init__(self, n_fields: int, reduction: int = 3):
        super().__init__()
        mid = max(2, n_fields // reduction)
        self.fc = nn.Sequential(nn.Linear(n_fields, mid), nn.ReLU(), nn.Linear(mid, n_fields), nn.ReLU())
        # Why: field means are ~0 at init (small embeddings), so the first layer's output is its bias; a
        # negative bias would leave every hidden ReLU dead and the excitation untrainable.
        nn.init.constant_(self.fc[0].bias, 0.1)
        nn.init.constant_(self.fc[2].bias, 1.0)  # start from weights ≈ 1 (identity re-weighting)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.fc(x.mean(-1))  # (B, F)
        return x * a.unsqueeze(-1)


class BilinearInteraction(nn.Module):
    """FiBiNET's bilinear interaction (Eq. 6-8): p_ij = (v_i W) ⊙ v_j for i < j. ``kind``: ``field_all`` (one
    W), ``field_each`` (W_i per field) or ``field_interaction`` (W_ij per pair). (B, F, D) → (B, F(F−1)/2, D)."""

    def __init__(self, n_fields: int, dim: int, kind: str = "field_interaction"):
        super().__init__()
        self.kind = kind
        pairs = [(i, j) for i in range(n_fields) for j in range(i + 1, n_fields)]
        self.register_buffer("left", torch.tensor([p[0] for p in pairs], dtype=torch.long), persistent=False)
        self.register_buffer("right", torch.tensor([p[1] for p in pairs], dtype=torch.long), persistent=False)
        n_w = {"field_all": 1, "field_each": n_fields, "field_interaction": len(pairs)}[kind]
        self.w = nn.Parameter(torch.randn(n_w, dim, dim) / math.sqrt(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        vi, vj = x[:, self.left], x[:, self.right]  # (B, P, D)
        if self.kind == "field_all":
            w = self.w[0]
            return (vi @ w) * vj
        w = self.w[self.left] if self.kind == "field_each" else self.w  # (P, D, D)
        return torch.einsum("bpd,pde->bpe", vi, w) * vj


class FiGNNLayer(nn.Module):
    """FiGNN's gated graph over fields (Li et al., CIKM 2019, Sec. 3.3-3.4).

    The fully connected field graph has edge weights from attention on node pairs (Eq. 4-5: LeakyReLU(wᵀ[h_i;h_j]),
    softmax over neighbours, self-loops removed); each node aggregates transformed neighbour states with an
    edge-wise W (DEVIATION: one output/input matrix pair per field rather than a full per-edge matrix, as in the
    authors' code), then a GRU cell updates the state with a residual connection to the initial embedding (Eq. 8).
    """

    def __init__(self, n_fields: int, dim: int, steps: int = 3):
        super().__init__()
        self.steps = steps
        self.w_out = nn.Parameter(torch.randn(n_fields, dim, dim) / math.sqrt(dim))
        self.w_in = nn.Parameter(torch.randn(n_fields, dim, dim) / math.sqrt(dim))
        self.att = nn.Linear(2 * dim, 1, bias=False)
        self.gru = nn.GRUCell(dim, dim)
        self.register_buffer("eye", torch.eye(n_fields, dtype=torch.bool), persistent=False)

    def adjacency(self, h: torch.Tensor) -> torch.Tensor:
        b, f, d = h.shape
        pair = torch.cat([h.unsqueeze(2).expand(b, f, f, d), h.unsqueeze(1).expand(b, f, f, d)], dim=-1)
        e = nn.functional.leaky_relu(self.att(pair).squeeze(-1))  # (B, F, F)
        return e.masked_fill(self.eye, float("-inf")).softmax(dim=-1)

    def forward(self, h0: torch.Tensor) -> torch.Tensor:
        b, f, d = h0.shape
        h = h0
        for _ in range(self.steps):
            a = self.adjacency(h)  # (B, F, F)
            out = torch.einsum("bfd,fde->bfe", h, self.w_out)  # message each node sends
            msg = a @ out  # (B, F, D): weighted sum over neighbours
            msg = torch.einsum("bfd,fde->bfe", msg, self.w_in)
            h = self.gru(msg.reshape(b * f, d), h.reshape(b * f, d)).view(b, f, d) + h0
        return h
