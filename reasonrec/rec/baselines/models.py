"""The classic baselines as small ``nn.Module``s sharing one method: ``logits(user_ids, hist, item_ids) -> [B, C]``.

Shapes: B batch, C candidate items per row (1 for pointwise scoring), L history length, d embedding size,
n_users / n_items table sizes (id 0 is padding). Histories are left-padded (most recent item last).

Each model also exposes ``user_emb(user_ids, hist) -> [B, d]`` and ``item_table() -> [n_items, d]``; the
estimator in :mod:`reasonrec.rec.baselines.train` turns those into ``user_embeddings()`` / ``item_embeddings()``.
Losses live in :mod:`reasonrec.rec.baselines.train` as plain functions of logits.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class Pop(nn.Module):
    """Popularity: every user gets the same item score.

    Implicit mode (STARec's "Pop" row): log(1 + number of training interactions of the item).
    Pointwise mode: DEVIATION — with explicit dislikes in the labels, raw counts are not probabilities, so the
    score is the item's like-rate in train, shrunk towards the global rate with a Beta prior of strength 10
    (logit of (likes + 10·p̄) / (shown + 10)); its AUC is the popularity baseline of a CTR protocol.
    Reference: the "most popular" baseline of every recsys library (cornac ``MostPop``).
    """

    def __init__(self, n_users: int, n_items: int):
        super().__init__()
        self.register_buffer("item_logit", torch.zeros(n_items))

    def fit_counts(self, item_ids: np.ndarray, labels: np.ndarray, pointwise: bool) -> None:
        n = self.item_logit.shape[0]
        shown = np.bincount(item_ids, minlength=n).astype(np.float64)
        if pointwise:
            likes = np.bincount(item_ids, weights=labels, minlength=n)
            prior = float(labels.mean())
            p = (likes + 10 * prior) / (shown + 10)
            val = np.log(p) - np.log1p(-p)
        else:
            val = np.log1p(shown)
        self.item_logit.copy_(torch.as_tensor(val, dtype=torch.float32))

    def logits(self, user_ids, hist, item_ids):  # (B, C)
        return self.item_logit[item_ids]

    def user_emb(self, user_ids, hist):  # (B, 1): popularity has no user factor
        return torch.ones(len(user_ids), 1)

    def item_table(self):  # (n_items, 1)
        return self.item_logit[:, None]


class MF(nn.Module):
    """Matrix factorisation: logit(u, i) = p_u · q_i + b_u + b_i + b (biases optional).

    Trained with BCE on labels (``mf``) or with the BPR loss (Rendle et al., UAI 2009) (``bpr``; b_u and b cancel
    there, b_i stays, as in cornac's BPR). Reference: zyang1580/CoLLM ``minigpt4/models/rec_model.py``
    (``MatrixFactorization``, a plain dot product). DEVIATION: biases on by default — on ML-100K ``collm`` most
    test users are cold (first seen in the test month) and the item bias is what scores them; ``bias=False``
    gives CoLLM's model. Init N(0, 0.1²) (CoLLM: smaller normal init; larger trains faster on CPU).
    Users / items absent from training keep zero vectors (``zero_unseen``), i.e. the item/user-neutral fallback
    cornac uses, instead of an untrained random vector.
    """

    def __init__(self, n_users: int, n_items: int, dim: int = 64, bias: bool = True):
        super().__init__()
        self.user = nn.Embedding(n_users, dim)
        self.item = nn.Embedding(n_items, dim)
        nn.init.normal_(self.user.weight, std=0.1)
        nn.init.normal_(self.item.weight, std=0.1)
        self.bias = bias
        if bias:
            self.user_bias = nn.Embedding(n_users, 1)
            self.item_bias = nn.Embedding(n_items, 1)
            self.global_bias = nn.Parameter(torch.zeros(1))
            nn.init.zeros_(self.user_bias.weight)
            nn.init.zeros_(self.item_bias.weight)

    @torch.no_grad()
    def zero_unseen(self, user_ids: np.ndarray, item_ids: np.ndarray) -> None:
        for table, seen in ((self.user, user_ids), (self.item, item_ids)):
            mask = torch.ones(table.num_embeddings, dtype=torch.bool)
            mask[torch.as_tensor(np.unique(seen))] = False
            table.weight[mask] = 0.0

    def user_emb(self, user_ids, hist):
        return self.user(user_ids)

    def item_table(self):
        return self.item.weight

    def logits(self, user_ids, hist, item_ids):
        s = torch.einsum("bd,bcd->bc", self.user(user_ids), self.item(item_ids))
        if self.bias:
            s = s + self.user_bias(user_ids) + self.item_bias(item_ids)[..., 0] + self.global_bias
        return s


class LightGCN(nn.Module):
    """LightGCN (He et al., SIGIR 2020): E = mean_{k=0..K} Â^k E⁰, Â = D^-½ A D^-½ of the user-item graph (Eq. 8/9).

    Reference: kuandeng/LightGCN, RecBole ``lightgcn.py``. The graph is built from the training positives
    (``set_graph``); logits are dot products of the propagated embeddings. Default K = 3 layers.
    DEVIATION: an item bias and a global bias are added to the logit (``bias=True``, default), for the same reason
    as in :class:`MF`: a user without training interactions has no edge, so its propagated vector is 0 and, on
    ``collm`` (≈86 % of ML-100K test rows are such users), a bias-free LightGCN scores all their items alike.
    ``bias=False`` gives the paper's model.
    """

    def __init__(self, n_users: int, n_items: int, dim: int = 64, n_layers: int = 3, bias: bool = True):
        super().__init__()
        self.n_users, self.n_items, self.n_layers = n_users, n_items, n_layers
        self.emb = nn.Embedding(n_users + n_items, dim)
        nn.init.normal_(self.emb.weight, std=0.1)
        self.bias = bias
        if bias:
            self.item_bias = nn.Embedding(n_items, 1)
            self.global_bias = nn.Parameter(torch.zeros(1))
            nn.init.zeros_(self.item_bias.weight)
        self.adj: torch.Tensor | None = None
        self._cache: torch.Tensor | None = None

    @torch.no_grad()
    def zero_unseen(self, user_ids: np.ndarray, item_ids: np.ndarray) -> None:
        mask = torch.ones(self.n_users + self.n_items, dtype=torch.bool)
        mask[torch.as_tensor(np.unique(user_ids))] = False
        mask[torch.as_tensor(np.unique(item_ids)) + self.n_users] = False
        self.emb.weight[mask] = 0.0

    def set_graph(self, user_ids: np.ndarray, item_ids: np.ndarray) -> None:
        pairs = np.unique(np.stack([user_ids, item_ids]), axis=1)
        u, i = torch.as_tensor(pairs[0]), torch.as_tensor(pairs[1]) + self.n_users
        rows, cols = torch.cat([u, i]), torch.cat([i, u])
        n = self.n_users + self.n_items
        deg = torch.bincount(rows, minlength=n).float().clamp(min=1)
        vals = deg[rows].rsqrt() * deg[cols].rsqrt()
        self.adj = torch.sparse_coo_tensor(torch.stack([rows, cols]), vals, (n, n),
                                           check_invariants=True).coalesce()

    def propagate(self) -> torch.Tensor:  # (n_users + n_items, d)
        if not self.training and self._cache is not None:
            return self._cache
        x = self.emb.weight
        layers = [x]
        for _ in range(self.n_layers):
            x = torch.sparse.mm(self.adj, x)
            layers.append(x)
        out = torch.stack(layers).mean(0)
        self._cache = None if self.training else out
        return out

    def train(self, mode: bool = True):
        self._cache = None
        return super().train(mode)

    def user_emb(self, user_ids, hist):
        return self.propagate()[user_ids]

    def item_table(self):
        return self.propagate()[self.n_users:]

    def logits(self, user_ids, hist, item_ids):
        e = self.propagate()
        s = torch.einsum("bd,bcd->bc", e[user_ids], e[self.n_users + item_ids])
        if self.bias:
            s = s + self.item_bias(item_ids)[..., 0] + self.global_bias
        return s


class SASRec(nn.Module):
    """SASRec (Kang & McAuley, ICDM 2018): causal self-attention over the history; logit = h_L · e_i (shared emb).

    Reference: kang205/SASRec, pmixer/SASRec.pytorch, RecBole ``sasrec.py``. Pre-LN blocks with learned positions,
    feed-forward of Linear layers (RecBole's NOTE: not 1×1 convs), dropout 0.2, 2 blocks, 1 head.
    Also the body of gSASRec (Petrov & Macdonald, RecSys 2023), which differs only in its loss (gBCE with more
    negatives; see ``gbce_loss``).
    DEVIATION: the last position may always be attended to, even when it is padding, so an empty history still
    yields a (position-only) vector instead of NaN.
    """

    def __init__(self, n_users: int, n_items: int, dim: int = 64, n_layers: int = 2, n_heads: int = 1,
                 max_len: int = 50, dropout: float = 0.2):
        super().__init__()
        self.item = nn.Embedding(n_items, dim, padding_idx=0)
        self.pos = nn.Embedding(max_len, dim)
        self.drop = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(dim, n_heads, dim_feedforward=dim, dropout=dropout, batch_first=True,
                                           norm_first=True, activation="relu")
        self.encoder = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.dim = dim
        nn.init.normal_(self.item.weight, std=0.1)
        self.register_buffer("causal", torch.triu(torch.ones(max_len, max_len, dtype=torch.bool), 1))

    def states(self, hist):  # hist (B, L) → (B, L, d): output at every position (causal)
        b, length = hist.shape
        x = self.item(hist) * self.dim**0.5 + self.pos.weight[-length:]  # (B, L, d)
        pad = hist == 0
        pad[:, -1] = False
        x = self.drop(x) * (~pad).unsqueeze(-1)
        h = self.encoder(x, mask=self.causal[-length:, -length:], src_key_padding_mask=pad)
        return self.norm(h)

    def user_emb(self, user_ids, hist):  # (B, d): the state after the most recent item
        return self.states(hist)[:, -1]

    def item_table(self):
        return self.item.weight

    def logits(self, user_ids, hist, item_ids):
        return torch.einsum("bd,bcd->bc", self.user_emb(user_ids, hist), self.item(item_ids))


class GRU4Rec(nn.Module):
    """GRU4Rec (Hidasi et al., ICLR 2016): a GRU reads the history; logit = W h_L · e_i.

    Reference: hidasib/GRU4Rec, RecBole ``gru4rec.py``. DEVIATION: trained on whole sequences (every position
    predicts the next item, like SASRec) with full
    softmax cross-entropy over all items (as RecBole's ``CE`` loss and the authors' 2023 re-evaluation favour)
    instead of session-parallel mini-batches with BPR-max/TOP1; one GRU layer, hidden = d.
    """

    def __init__(self, n_users: int, n_items: int, dim: int = 64, dropout: float = 0.2):
        super().__init__()
        self.item = nn.Embedding(n_items, dim, padding_idx=0)
        self.gru = nn.GRU(dim, dim, batch_first=True)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(dim, dim)
        nn.init.normal_(self.item.weight, std=0.1)

    def states(self, hist):  # (B, L) left-padded → (B, L, d)
        # Left padding: zero embeddings run through the GRU first; packing would need right alignment. The GRU
        # learns to ignore the leading zeros (its input is exactly 0 there).
        h, _ = self.gru(self.drop(self.item(hist)))
        return self.out(h)

    def user_emb(self, user_ids, hist):  # (B, d)
        return self.states(hist)[:, -1]

    def item_table(self):
        return self.item.weight

    def logits(self, user_ids, hist, item_ids):
        return torch.einsum("bd,bcd->bc", self.user_emb(user_ids, hist), self.item(item_ids))
