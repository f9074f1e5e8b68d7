"""The shared CTR model config and base class: ID embeddings, history representation, knowledge fields.

Every backbone sees the same feature fields (B = batch, D = ``embedding_dim``, L = history length):

- ``user``: user-id embedding (unless ``user_id_field=False``, see :class:`CTRModelConfig`);   ``item``: target
  item-id embedding;   ``cats``: mean of the item's category embeddings;   one field per demographic column
  present (gender, age, occupation);
- ``history`` (non-sequence models only): masked mean of the history items' embeddings (plus the rating-level
  embedding as side information, so liked and disliked history items differ);
- one field per knowledge vector, mapped by a connector (``reasonrec.rec.connectors``) to D — the text-vector
  field "interacts like any other field" (KAR Sec. 3.3, R4ec Eq. 12, TrackRec Sec. 3.4).

Sequence models (DIN, DIEN, GRU4Rec) replace the ``history`` field by their own sequence encoder over item
representations ``[item_emb ; mean cat_emb]`` (2D), as DIN concatenates goods and category embeddings.

A model owns no optimizer and never moves itself to a device; ``forward(batch)`` returns ``{"logit": (B,)}``
(DIEN also ``"aux_loss"`` while training).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from ...config import Section
from ..connectors import CONNECTORS
from ..features import FeatureMap
from ..layers import masked_mean


class CTRModelConfig(Section):
    """Hyper-parameters of every CTR backbone (unused fields are ignored by models that do not need them).

    Shared:
        embedding_dim: D of every ID and knowledge field; default 32 (CoLLM/KAR setting for the CTR backbones).
        mlp_hidden: hidden sizes of the final MLP; default (200, 80) as in DIN (Zhou et al. 2018, Sec. 6.3) and DIEN.
        dropout: dropout in MLPs; default 0.0.
        init_std: std of the normal init of embeddings; default 1e-4 (FuxiCTR / torch-rechub default).
        user_id_field: give the model a user-id embedding field. Default ``None``: the caller decides from the
            split (:func:`reasonrec.rec.pipeline.run_ctr`: off on ``collm``, ``tallrec`` and ``starec``, on for
            ``kar``); a model built with ``None`` has the field. Why off on a time split: ~86% of ML-100K ``collm`` test samples belong to
            users with no training row, whose id rows stay at their near-zero init; with the field the model
            learns each training user's bias from the id instead of from the history (which every user has)
            and mispredicts the cold majority (``run_ctr`` drops the demographic fields there too, for the same
            reason; figures at ``reasonrec.rec.pipeline.USER_FIELDS``).
    Knowledge:
        connector: ``mlp`` (R4ec/TrackRec), ``moe`` or ``hybrid`` (KAR hybrid-expert adaptor); default ``mlp``.
        connector_hidden: hidden sizes inside connector MLPs / experts; default (128,).
        n_experts: experts per field (``moe``) or specific experts per field (``hybrid``); default 4.
        n_shared: shared experts (``hybrid``); default 2.
    DIN / DIEN / GRU4Rec:
        attention_hidden: DIN activation-unit MLP; default (80, 40) (DIN paper, Fig. 2).
        seq_activation: activation of DIN/DIEN MLPs (attention unit and final MLP); default ``relu``.
            DEVIATION: the DIN paper uses Dice (Sec. 4.3); on ML-100K ``collm`` (test users mostly unseen in
            training; a likely cause is Dice's BatchNorm, whose running statistics come from training batches)
            Dice cost DIN 0.005 test AUC (seed 0, no user-id field, softmax attention: 0.7465 with Dice, 0.7522 with ReLU;
            issue 15). ``dice`` is still available.
        attention_softmax: normalise DIN's attention weights over the history with a softmax, so the pooled
            interest is a weighted *mean* of the history items. Default True. DEVIATION: the DIN paper keeps
            the raw weights "to reserve the intensity of user interests" (Sec. 4.3). Why: on ML-100K ``collm``
            every user has (up to) 10 history items, so the intensity carries little, and the weighted mean
            (like the mean rating a GBM reads) generalises better to the cold test users: seed-0 test AUC
            0.7505 → 0.7522 with ReLU, no user-id field (issue 15).
        dien_aux_weight: weight α of DIEN's auxiliary loss (DIEN Eq. 8); default 1.0 (paper).
    AutoInt:
        autoint_layers: 3; autoint_heads: 2; autoint_head_dim: 32 (AutoInt Sec. 5.1: d' = 32, 2 heads, 3 layers).
        autoint_dnn: add the parallel MLP of AutoInt+; default False.
    DCN:
        cross_layers: 3; dcn_version: ``v1`` (Wang et al. 2017) or ``v2`` (DCN-V2, Wang et al. 2021).
    FiGNN:
        fignn_steps: 3 (FiGNN Sec. 4.1.3 finds 2-3 steps best).
    FiBiNET:
        bilinear: ``field_interaction`` (paper's best), ``field_each`` or ``field_all``; senet_reduction: 3.
    """

    embedding_dim: int = Field(32, ge=1)
    mlp_hidden: tuple[int, ...] = (200, 80)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    init_std: float = Field(1e-4, gt=0.0)
    user_id_field: bool | None = None
    connector: Literal["mlp", "moe", "hybrid"] = "mlp"
    connector_hidden: tuple[int, ...] = (128,)
    n_experts: int = Field(4, ge=1)
    n_shared: int = Field(2, ge=1)
    attention_hidden: tuple[int, ...] = (80, 40)
    seq_activation: Literal["dice", "prelu", "relu"] = "relu"
    attention_softmax: bool = True
    dien_aux_weight: float = Field(1.0, ge=0.0)
    autoint_layers: int = Field(3, ge=1)
    autoint_heads: int = Field(2, ge=1)
    autoint_head_dim: int = Field(32, ge=1)
    autoint_dnn: bool = False
    cross_layers: int = Field(3, ge=1)
    dcn_version: Literal["v1", "v2"] = "v1"
    fignn_steps: int = Field(3, ge=1)
    bilinear: Literal["field_interaction", "field_each", "field_all"] = "field_interaction"
    senet_reduction: int = Field(3, ge=1)


class CTRBase(nn.Module):
    """Embeddings and field assembly shared by every backbone; subclasses define ``forward``."""

    history_field: bool = True  # non-sequence models pool the history into one field

    def __init__(self, fmap: FeatureMap, cfg: CTRModelConfig | None = None):
        super().__init__()
        cfg = cfg or CTRModelConfig()
        self.fmap, self.cfg = fmap, cfg
        d = cfg.embedding_dim
        self.use_user_id = cfg.user_id_field is not False
        self.user_emb = nn.Embedding(fmap.n_users + 1, d, padding_idx=0) if self.use_user_id else None
        self.item_emb = nn.Embedding(fmap.n_items + 1, d, padding_idx=0)
        self.cat_emb = nn.Embedding(fmap.n_categories, d, padding_idx=0)
        self.user_field_emb = nn.ModuleList([nn.Embedding(v, d, padding_idx=0) for v in fmap.user_fields.values()])
        self.rating_emb = nn.Embedding(fmap.rating_levels, d) if fmap.rating_levels else None
        self.connector = None
        if fmap.knowledge:
            self.connector = CONNECTORS[cfg.connector](
                [f.dim for f in fmap.knowledge], d, hidden=cfg.connector_hidden, dropout=cfg.dropout,
                n_experts=cfg.n_experts, n_shared=cfg.n_shared)
        for emb in self._embeddings():
            nn.init.normal_(emb.weight, std=cfg.init_std)
            if emb.padding_idx is not None:
                with torch.no_grad():
                    emb.weight[emb.padding_idx].zero_()

    def _embeddings(self) -> list[nn.Embedding]:
        return [m for m in self.modules() if isinstance(m, nn.Embedding)]

    @property
    def n_fields(self) -> int:
        """F: (user), item, cats, demographics, (history), knowledge fields."""
        return (2 + int(self.use_user_id) + len(self.fmap.user_fields) + int(self.history_field)
                + len(self.fmap.knowledge))

    @property
    def item_dim(self) -> int:
        """Size of an item representation [item_emb ; mean cat_emb] used by sequence models."""
        return 2 * self.cfg.embedding_dim

    def cats_repr(self, cats: torch.Tensor) -> torch.Tensor:
        # cats (..., C) -> (..., D): mean over the item's non-padding categories (zeros if it has none).
        # Why embedding_bag: same result as masked_mean(cat_emb(cats), cats > 0) without materialising the
        # (..., C, D) tensor — the largest one in DIN/DIEN's history path.
        flat = cats.reshape(-1, cats.shape[-1])
        out = nn.functional.embedding_bag(flat, self.cat_emb.weight, mode="mean", padding_idx=0)
        return out.view(*cats.shape[:-1], -1)

    def item_repr(self, item_ids: torch.Tensor, cats: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.item_emb(item_ids), self.cats_repr(cats)], dim=-1)  # (..., 2D)

    def hist_item_emb(self, batch: dict) -> torch.Tensor:
        e = self.item_emb(batch["hist_item_ids"])  # (B, L, D)
        if self.rating_emb is not None:
            e = e + self.rating_emb(batch["hist_ratings"]) * batch["hist_mask"].unsqueeze(-1)
        return e

    def hist_repr(self, batch: dict) -> torch.Tensor:
        """(B, L, 2D) history item representations with rating side information on the item part."""
        return torch.cat([self.hist_item_emb(batch), self.cats_repr(batch["hist_cats"])], dim=-1)

    def knowledge_fields(self, batch: dict) -> torch.Tensor | None:
        if self.connector is None:
            return None
        return self.connector([batch["knowledge"][f.name] for f in self.fmap.knowledge])  # (B, k, D)

    def fields(self, batch: dict) -> torch.Tensor:
        """(B, F, D) stacked field embeddings (history field only if ``history_field``)."""
        out = [self.user_emb(batch["user_id"])] if self.user_emb is not None else []
        out += [self.item_emb(batch["item_id"]), self.cats_repr(batch["item_cats"])]
        feats = batch["user_feats"]
        out += [emb(feats[:, i]) for i, emb in enumerate(self.user_field_emb)]
        if self.history_field:
            out.append(masked_mean(self.hist_item_emb(batch), batch["hist_mask"], dim=1))
        x = torch.stack(out, dim=1)
        k = self.knowledge_fields(batch)
        return x if k is None else torch.cat([x, k], dim=1)
