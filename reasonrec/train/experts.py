"""LoRA experts and their instance-wise fusion (ThinkRec §3.3).

1. :func:`cluster_users` — standardise the user embeddings (of a collaborative model, e.g. MF) and cluster them
   (KMeans or Ward); k fixed, or the best silhouette over 2..10.
2. :func:`train_experts` — one LoRA per group, each starting from the global LoRA and fine-tuning only its last 8
   decoder layers on the group's samples (any of our trainers: SFT or the Yes/No trainer).
3. :func:`gate_weights` — w = softmax(cos(user, group mean) / τ), τ = 0.1 (ThinkRec code ``adaptive_lora``).
4. :func:`route_users` — top weight > 0.5 + 0.6/N → that expert alone; normalised gate entropy ≥ 0.95 → the global
   LoRA; otherwise a per-user fusion ΔW = Σ_i w_i·s_i·B_i·A_i (s_i = α/r of expert i).
5. :func:`run_routed` — batched inference: users are grouped by their choice; each expert / global group runs with
   that adapter active, and the fused group runs in one batch whose rows each get their own weights, through
   forward hooks on peft's ``lora.Linear`` layers (:func:`expert_mixture`).

Exactness. peft's ``add_weighted_adapter(..., combination_type="linear")`` builds A = Σ√(w_i s_i)A_i and
B = Σ√(w_i s_i)B_i, so BA contains cross terms B_i A_j (i ≠ j): it is not Σ w_i s_i B_i A_i. ThinkRec's code uses
"linear"; we do not (DEVIATION, a fix). ``combination_type="cat"`` stacks the ranks and is exact; :func:`fused_adapter`
uses it to write a single per-user adapter (e.g. for serving), and the mixture hooks compute the same sum without
building one. Both are tested against densely merged weights.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from .. import io
from ..errors import ConfigError, DataError
from .config import ExpertsSection, SFTConfig, YesNoConfig

GLOBAL = "global"


def expert_name(i: int) -> str:
    return f"expert{i}"


# --------------------------------------------------------------------------------------------- clustering


@dataclass
class Clustering:
    """Result of :func:`cluster_users`: ``labels_`` (U,), chosen ``k_``, silhouette per tried k, ``centers_``
    (k, D) = group means of the *raw* embeddings (the experts' representations, as ThinkRec's code)."""

    labels_: np.ndarray
    k_: int
    silhouettes_: dict[int, float]
    centers_: np.ndarray


def cluster_users(emb: np.ndarray, *, method: Literal["kmeans", "ward"] = "kmeans", k: int | str = "auto",
                  k_range: tuple[int, int] = (2, 10), seed: int = 0) -> Clustering:
    """Cluster users on their standardised embeddings ``emb`` (U, D)."""
    from sklearn.cluster import AgglomerativeClustering, KMeans
    from sklearn.metrics import silhouette_score
    from sklearn.preprocessing import StandardScaler

    emb = np.asarray(emb, dtype=np.float64)
    if emb.ndim != 2 or len(emb) < 3:
        raise DataError(f"cluster_users: need a (users, dim) matrix with ≥ 3 users, got shape {emb.shape}")
    x = StandardScaler().fit_transform(emb)

    def fit(n: int) -> np.ndarray:
        if method == "kmeans":
            return KMeans(n_clusters=n, n_init=10, random_state=seed).fit_predict(x)
        return AgglomerativeClustering(n_clusters=n, linkage="ward").fit_predict(x)

    if k == "auto":
        lo, hi = k_range
        hi = min(hi, len(x) - 1)
        if lo < 2 or hi < lo:
            raise ConfigError(f"experts.k_range: {k_range} gives no valid k for {len(x)} users (need 2 ≤ lo ≤ hi < users)")
        scores = {n: float(silhouette_score(x, fit(n))) for n in range(lo, hi + 1)}
        best = max(scores, key=scores.get)
    else:
        if not 1 <= int(k) < len(x):
            raise ConfigError(f"experts.k: {k} must be between 1 and the number of users - 1 ({len(x) - 1})")
        best, scores = int(k), {}
    labels = fit(best) if best > 1 else np.zeros(len(x), dtype=int)
    centers = np.stack([emb[labels == g].mean(0) for g in range(best)])
    return Clustering(labels, best, scores, centers)


# --------------------------------------------------------------------------------------------- gate and routing


def gate_weights(user_emb: np.ndarray | torch.Tensor, centers: np.ndarray | torch.Tensor,
                 tau: float = 0.1) -> torch.Tensor:
    """w = softmax(cos(u, c_i) / τ) (ThinkRec Eq. 8): (U, D) × (N, D) → (U, N)."""
    u = torch.as_tensor(np.asarray(user_emb), dtype=torch.float32)
    c = torch.as_tensor(np.asarray(centers), dtype=torch.float32)
    if u.ndim == 1:
        u = u.unsqueeze(0)
    cos = torch.nn.functional.cosine_similarity(u.unsqueeze(1), c.unsqueeze(0), dim=-1)  # (U, N)
    return torch.softmax(cos / tau, dim=-1)


@dataclass(frozen=True)
class Route:
    """One user's adapter choice: ``expert`` (index in ``expert``), ``global``, or ``fused`` with ``weights``."""

    kind: Literal["expert", "global", "fused"]
    expert: int | None
    weights: tuple[float, ...]

    @property
    def key(self) -> str:
        return expert_name(self.expert) if self.kind == "expert" else self.kind


def route_users(weights: torch.Tensor, *, single_margin: float = 0.6, entropy_threshold: float = 0.95) -> list[Route]:
    """ThinkRec's gate rules per row of ``weights`` (U, N): max w > 0.5 + single_margin/N → that expert; else
    entropy ≥ entropy_threshold · log N → global; else fused (ThinkRec code ``adaptive_lora``)."""
    n = weights.shape[1]
    routes = []
    for w in weights:
        ent = float(-(w * torch.log(w + 1e-10)).sum())
        if float(w.max()) > 0.5 + single_margin / n:
            routes.append(Route("expert", int(w.argmax()), tuple(w.tolist())))
        elif n > 1 and ent >= entropy_threshold * math.log(n):
            routes.append(Route("global", None, tuple(w.tolist())))
        else:
            routes.append(Route("fused", None, tuple(w.tolist())))
    return routes


# --------------------------------------------------------------------------------------------- fusion


def _lora_layers(model) -> Iterator:
    from peft.tuners.lora import LoraLayer

    for module in model.modules():
        if isinstance(module, LoraLayer) and isinstance(module, torch.nn.Module) and hasattr(module, "lora_A"):
            yield module


@contextlib.contextmanager
def expert_mixture(model, names: Sequence[str], row_weights: torch.Tensor) -> Iterator[None]:
    """Within the block, every LoRA linear layer outputs base(x) + Σ_i w[b, i]·s_i·B_i(A_i(x)) for row b.

    ``row_weights`` (B, N) gives each batch row its own mixture of the adapters ``names`` — the exact fusion
    ΔW_b = Σ_i w_bi s_i B_i A_i, for a whole batch of users at once. Adapters are disabled through peft's API
    (``disable_adapter``) so the layers return the base output, and forward hooks add the mixture; the hooks are
    removed in ``finally``. Inference only (no LoRA dropout).
    """
    missing = [n for n in names if n not in model.peft_config]
    if missing:
        raise ConfigError(f"expert_mixture: unknown adapter(s) {missing}; loaded: {list(model.peft_config)}")
    w = torch.as_tensor(row_weights, dtype=torch.float32)
    handles = []

    def hook(module, args, output):
        x = args[0]
        extra = 0
        for i, name in enumerate(names):
            if name not in module.lora_A:
                continue
            a, b = module.lora_A[name], module.lora_B[name]
            delta = b(a(x.to(a.weight.dtype))) * module.scaling[name]              # (B, T, out)
            extra = extra + w[:, i].to(delta.dtype).view(-1, *([1] * (delta.dim() - 1))) * delta
        return output + extra.to(output.dtype) if torch.is_tensor(extra) else output  # fp32 LoRA on a bf16 base

    try:
        for layer in _lora_layers(model):
            handles.append(layer.register_forward_hook(hook))
        with model.disable_adapter():
            yield
    finally:
        for h in handles:
            h.remove()


def fused_adapter(model, names: Sequence[str], weights: Sequence[float], adapter_name: str) -> str:
    """Add one adapter with ΔW = Σ w_i s_i B_i A_i exactly (peft ``add_weighted_adapter``, ``cat``: ranks stacked)."""
    model.add_weighted_adapter(list(names), [float(x) for x in weights], adapter_name, combination_type="cat")
    return adapter_name


def merged_delta(model, names: Sequence[str], weights: Sequence[float]) -> dict[str, torch.Tensor]:
    """Dense reference: per LoRA layer, Σ_i w_i · get_delta_weight(name_i) (peft's own dense delta)."""
    out = {}
    lora_layers = set(_lora_layers(model))
    for mod_name, layer in model.named_modules():
        if layer in lora_layers:
            out[mod_name] = sum(w * layer.get_delta_weight(n) for n, w in zip(names, weights, strict=True)
                                if n in layer.lora_A)
    return out


def run_routed(model, routes: Sequence[Route], n_experts: int, fn: Callable[[list[int]], Any]) -> dict[int, Any]:
    """Batched inference grouped by adapter choice.

    ``fn(indices)`` must run the model once on a batch whose rows are the users ``indices`` (in that order) and
    return one result per row. Users routed to the same expert (or to global) share a batch with that adapter
    active; all fused users share one batch through :func:`expert_mixture`. Returns ``{user index: result}``.
    """
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(routes):
        groups.setdefault(r.key, []).append(i)
    names = [expert_name(i) for i in range(n_experts)]
    previous = model.active_adapter
    results: dict[int, Any] = {}
    try:
        for key, idx in groups.items():
            if key == "fused":
                w = torch.tensor([routes[i].weights for i in idx])
                with expert_mixture(model, names, w):
                    outs = fn(idx)
            else:
                model.set_adapter(GLOBAL if key == "global" else key)
                outs = fn(idx)
            results.update(zip(idx, outs, strict=True))
    finally:
        model.set_adapter(previous)
    return results


# --------------------------------------------------------------------------------------------- training / loading


@dataclass
class ExpertsResult:
    folder: Path
    clustering: Clustering
    adapter_dirs: list[Path]


def train_experts(trainer_cfg: SFTConfig | YesNoConfig, global_adapter: str | Path, df, user_emb: dict[Any, Any],
                  experts: ExpertsSection, *, user_column: str = "user_id", out_dir: str | Path) -> ExpertsResult:
    """ThinkRec §3.3.1: cluster users, then fine-tune the global LoRA's last ``experts.last_layers`` layers on each
    group's rows of ``df``. ``user_emb`` maps user id → embedding. Writes ``out_dir/experts.json`` (k, centers,
    silhouettes) and ``out_dir/expert{i}/adapter``; finished experts are skipped on a re-run."""
    from .sft import train_sft
    from .yesno import train_yesno

    out_dir = Path(out_dir)
    users = sorted(user_emb)
    emb = np.stack([np.asarray(user_emb[u], dtype=np.float64) for u in users])
    cl = cluster_users(emb, method=experts.method, k=experts.k, k_range=experts.k_range, seed=trainer_cfg.training.seed)
    group_of = dict(zip(users, cl.labels_.tolist(), strict=True))
    unknown = set(df[user_column]) - set(group_of)
    if unknown:
        raise DataError(f"train_experts: {len(unknown)} user(s) in the data have no embedding, e.g. {sorted(unknown)[:5]}")
    train = train_sft if isinstance(trainer_cfg, SFTConfig) else train_yesno
    dirs = []
    for g in range(cl.k_):
        cfg = copy.deepcopy(trainer_cfg)
        cfg.model.init_adapter = Path(global_adapter)
        cfg.model.trainable_last_layers = experts.last_layers
        cfg.training.output_dir = out_dir / expert_name(g)
        rows = df[df[user_column].map(group_of) == g]
        if len(rows) == 0:
            raise DataError(f"train_experts: group {g} has no training rows")
        dirs.append(train(cfg, rows).adapter_dir)
    io.write_json(out_dir / "experts.json", {
        "k": cl.k_, "silhouettes": cl.silhouettes_, "centers": cl.centers_.tolist(), "global_adapter": str(global_adapter),
        "experts": [str(d) for d in dirs], "tau": experts.tau, "single_margin": experts.single_margin,
        "entropy_threshold": experts.entropy_threshold, "group_of": {str(u): g for u, g in group_of.items()},
    })
    return ExpertsResult(out_dir, cl, dirs)


def load_experts(base_model, folder: str | Path):
    """A peft model with adapters ``global`` and ``expert0..``, and the saved experts.json info."""
    from peft import PeftModel

    info = json.loads((Path(folder) / "experts.json").read_text())
    model = PeftModel.from_pretrained(base_model, info["global_adapter"], adapter_name=GLOBAL)
    for i, d in enumerate(info["experts"]):
        model.load_adapter(d, adapter_name=expert_name(i))
    model.eval()
    return model, info
