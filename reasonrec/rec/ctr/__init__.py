"""CTR backbones: one small module per model, all built on ``reasonrec.rec.layers`` and :class:`CTRBase`.

:data:`CTR_MODELS` is the one name → class registry; :func:`build_ctr_model` refuses unknown names with the list.
"""

from __future__ import annotations

from torch import nn

from ...errors import ConfigError
from ..features import FeatureMap
from .autoint import AutoInt
from .base import CTRBase, CTRModelConfig
from .dcn import DCN, DCNv2
from .deepfm import DeepFM
from .dien import DIEN
from .din import DIN
from .fibinet import FiBiNET
from .fignn import FiGNN
from .gru4rec import GRU4RecCTR

CTR_MODELS: dict[str, type[CTRBase]] = {
    "din": DIN,
    "dien": DIEN,
    "gru4rec_ctr": GRU4RecCTR,
    "autoint": AutoInt,
    "fignn": FiGNN,
    "fibinet": FiBiNET,
    "dcn": DCN,
    "dcnv2": DCNv2,
    "deepfm": DeepFM,
}


def build_ctr_model(name: str, fmap: FeatureMap, cfg: CTRModelConfig | None = None) -> nn.Module:
    if name not in CTR_MODELS:
        raise ConfigError(f"unknown CTR model '{name}'; choose one of {', '.join(CTR_MODELS)}")
    return CTR_MODELS[name](fmap, cfg)


__all__ = ["CTR_MODELS", "CTRBase", "CTRModelConfig", "build_ctr_model"]
