"""Which float type to compute in: bf16 where the hardware runs it natively, fp32 elsewhere.

One function decides for every backend and trainer (:func:`resolve_dtype`), so generation, scoring and training
agree on a machine, and every decision is logged and kept for the run manifest (:func:`dtype_manifest`).

Native bf16 means:
- CUDA: ``torch.cuda.is_bf16_supported()`` (Ampere and newer);
- CPU: Intel AMX tiles (``torch.cpu._is_amx_tile_supported()``) or the AVX512-BF16 dot-product instructions
  (``torch.cpu._is_avx512_bf16_supported()``, the ``avx512_bf16`` cpuinfo flag). Without either, oneDNN emulates
  bf16 by converting to fp32 and runs slower than fp32 itself, so ``auto`` stays in fp32 there.

Measured with ``torch.matmul`` on 2048 × 2048 matrices, 2 threads (``benchmarks/generation.py`` prints the same
figure at its start): Xeon with AMX 2,204 GFLOP/s bf16 vs 344 fp32 (issue 14); AMD EPYC with AVX512-BF16 and no
AMX ≈ 295 vs ≈ 80 (machine loaded by other jobs, load average ≈ 3 on 2 cores), so bf16 wins on both.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Literal

from .cpu import cpu_flags, has_amx

log = logging.getLogger(__name__)

DtypeName = Literal["auto", "bfloat16", "float32", "float16"]


@dataclass(frozen=True)
class DtypeChoice:
    """One dtype decision: what was asked, what was chosen, on which device and why."""

    requested: str
    dtype: str
    device: str
    reason: str
    where: str = ""


@lru_cache(maxsize=1)
def cpu_features() -> dict[str, object]:
    """The CPU's bf16-relevant features: ``amx``, ``avx512_bf16``, torch's ``capability`` and the flag list."""
    import torch

    def probe(name: str) -> bool:
        fn = getattr(torch.cpu, name, None)  # private torch helpers: absent on old releases
        try:
            return bool(fn()) if fn is not None else False
        except RuntimeError:
            return False

    flags = sorted(f for f in cpu_flags() if f.startswith(("avx512", "amx", "avx2", "fma")))
    return {
        "amx": probe("_is_amx_tile_supported") or has_amx(),
        "avx512_bf16": probe("_is_avx512_bf16_supported") or "avx512_bf16" in flags,
        "capability": torch.backends.cpu.get_cpu_capability(),
        "flags": flags,
    }


def native_bf16(device: str = "cpu") -> tuple[bool, str]:
    """(whether ``device`` computes bf16 natively, the reason in words)."""
    import torch

    if device.startswith("cuda"):
        ok = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return ok, "CUDA bf16 supported" if ok else "this GPU has no bf16"
    feats = cpu_features()
    if feats["amx"]:
        return True, "CPU has AMX tiles"
    if feats["avx512_bf16"]:
        return True, "CPU has AVX512-BF16"
    return False, f"CPU has neither AMX nor AVX512-BF16 (torch capability {feats['capability']})"


_CHOICES: list[DtypeChoice] = []


def resolve_dtype(requested: str, device: str = "cpu", where: str = "") -> DtypeChoice:
    """The dtype to compute in for ``requested`` (``auto``, ``bfloat16``, ``float32``, ``float16``) on ``device``.

    ``auto`` = bfloat16 where :func:`native_bf16` says so, else float32 (fp16 is never chosen automatically: on
    CPU it is emulated, and on GPUs without bf16 its range needs loss scaling). Explicit requests are honoured
    (bf16 on a CPU without it works, slowly). The choice is logged and kept for :func:`dtype_manifest`.
    ``where`` names the caller (e.g. ``transformers:smollm2-135m``, ``train:sft``).
    """
    if requested not in ("auto", "bfloat16", "float32", "float16"):
        from ..errors import ConfigError

        raise ConfigError(f"dtype: expected auto, bfloat16, float32 or float16; got {requested!r}")
    if requested == "auto":
        ok, why = native_bf16(device)
        choice = DtypeChoice(requested, "bfloat16" if ok else "float32", device, why, where)
    else:
        choice = DtypeChoice(requested, requested, device, "requested", where)
    if choice not in _CHOICES:
        _CHOICES.append(choice)
        log.info("dtype %s for %s on %s (%s: %s)", choice.dtype, where or "model", device, requested, choice.reason)
    return choice


def dtype_manifest() -> dict[str, object]:
    """Every dtype decision of this process and the CPU's features, for a run's ``manifest.json``."""
    feats = cpu_features()
    return {"cpu": {k: feats[k] for k in ("amx", "avx512_bf16", "capability")},
            "choices": [asdict(c) for c in _CHOICES]}
