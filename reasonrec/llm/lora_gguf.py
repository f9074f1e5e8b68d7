"""PEFT LoRA adapters → GGUF LoRA adapters for llama.cpp, converted once and cached by checksum.

llama.cpp reads a LoRA adapter as a GGUF file of ``general.type = adapter``, ``adapter.type = lora``,
``adapter.lora.alpha`` and, for every adapted weight ``W`` of the base GGUF (e.g. ``blk.3.attn_q.weight``), the
pair ``W.lora_a`` (rank × in) and ``W.lora_b`` (out × rank); at run time it adds ``scale · α / r · B (A x)`` to
``W x`` (``llama-adapter.cpp``, ``llm_build_lora_mm``). This is what llama.cpp's own ``convert_lora_to_gguf.py``
writes. That script ships only in llama.cpp's *source* (the llama-cpp-python sdist's ``vendor/llama.cpp``), not
in the llama-cpp-python wheel, and it imports the whole ``convert_hf_to_gguf`` package and reads the base model's
Hugging Face ``config.json``; so a fresh machine with the ``[llamacpp]`` extra installed from a wheel has no
converter. This module writes the same file with the ``gguf`` package (a dependency), reading names and head
counts from the base GGUF itself, so it needs nothing but the adapter folder and the GGUF it will run on.

What it does, as the script does for the LLaMA family:
- tensor names through ``gguf``'s ``TensorNameMap`` for the base GGUF's architecture
  (``model.layers.3.self_attn.q_proj`` → ``blk.3.attn_q``);
- the rotary-embedding row permutation ``convert_hf_to_gguf`` applies to LLaMA's ``q_proj`` / ``k_proj``
  weights (``LlamaModel.permute``): the adapter's delta ``B A`` must be permuted the same way, which permutes the
  rows of ``B`` only;
- ``α`` such that llama.cpp's ``α / r`` equals peft's scaling (``α / r``, or ``α / √r`` with rsLoRA).
Not supported (an error names it): DoRA, per-module rank or alpha patterns, adapters on embeddings or the LM head,
and architectures whose conversion permutes or fuses weights otherwise (only LLaMA's permutation is implemented;
other architectures are converted without one — checked against transformers for LLaMA (SmolLM2) only).

Tensors are written in F32 (a rank-8 adapter of SmolLM2-135M is ~19 MB), so nothing is rounded twice.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np

from .. import io
from ..errors import BackendError

#: architectures whose HF → GGUF conversion permutes the rows of q_proj / k_proj (convert_hf_to_gguf's
#: ``LlamaModel.permute``); the adapter's B matrices of those projections must be permuted alike.
PERMUTED_QK = frozenset({"llama"})


def lora_cache() -> Path:
    """Where converted adapters are kept: ``reasonrec.io.cache_dir()/lora``."""
    return io.cache_dir() / "lora"


def adapter_weights(folder: Path) -> Path:
    """The weights file peft's ``save_pretrained`` wrote in ``folder``."""
    for name in ("adapter_model.safetensors", "adapter_model.bin"):
        if (folder / name).exists():
            return folder / name
    raise BackendError(f"{folder} has no adapter_model.safetensors; save the adapter with peft's save_pretrained")


def adapter_checksum(folder: Path) -> str:
    """sha256 of the adapter's weights and config: the cache key of its conversion."""
    h = hashlib.sha256()
    for p in (adapter_weights(folder), folder / "adapter_config.json"):
        h.update(p.read_bytes())
    return h.hexdigest()


def _permute(b: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf's ``LlamaModel.permute`` on the output rows of ``b`` (out × r)."""
    return b.reshape(n_head, 2, b.shape[0] // n_head // 2, *b.shape[1:]).swapaxes(1, 2).reshape(b.shape)


def _load_tensors(path: Path) -> dict[str, np.ndarray]:
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file

        try:
            return load_file(str(path))
        except (TypeError, ValueError):  # bf16 tensors have no numpy dtype: go through torch
            pass
    import torch

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file as load_torch

        state = load_torch(str(path))
    else:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    return {k: v.float().numpy() for k, v in state.items()}


def convert(folder: Path, base_gguf: Path, out: Path) -> Path:
    """Write ``folder`` (a peft LoRA adapter) as a llama.cpp GGUF LoRA for the model in ``base_gguf``."""
    import gguf

    cfg = json.loads((folder / "adapter_config.json").read_text())
    if cfg.get("peft_type", "LORA") != "LORA":
        raise BackendError(f"{folder}: peft_type {cfg.get('peft_type')} is not LoRA")
    for key in ("use_dora", "rank_pattern", "alpha_pattern", "modules_to_save"):
        if cfg.get(key):
            raise BackendError(f"{folder}: {key} is set; the llama.cpp conversion supports plain LoRA only")
    r, alpha = int(cfg["r"]), float(cfg["lora_alpha"])
    scaling = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r

    reader = gguf.GGUFReader(str(base_gguf))
    arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()

    def field(key: str) -> int:
        return int(reader.fields[f"{arch}.{key}"].parts[-1][0])

    n_layers, n_head = field("block_count"), field("attention.head_count")
    n_head_kv = field("attention.head_count_kv") if f"{arch}.attention.head_count_kv" in reader.fields else n_head
    base_names = {t.name for t in reader.tensors}
    try:
        model_arch = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch)
    except StopIteration:
        raise BackendError(f"gguf {gguf.__name__} does not know architecture {arch!r} of {base_gguf}") from None
    names = gguf.get_tensor_name_map(model_arch, n_layers)

    pairs: dict[str, dict[str, np.ndarray]] = {}
    for key, value in _load_tensors(adapter_weights(folder)).items():
        # peft: base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight
        part = "A" if ".lora_A." in key else "B" if ".lora_B." in key else None
        if part is None:
            raise BackendError(f"{folder}: tensor {key} is not a LoRA A/B matrix (embeddings or extra modules "
                               "cannot be converted for llama.cpp)")
        module = key.split(f".lora_{part}.")[0].removeprefix("base_model.model.")
        gguf_name = names.get_name(module)
        if gguf_name is None or f"{gguf_name}.weight" not in base_names:
            raise BackendError(f"{folder}: module {module} has no weight in {base_gguf.name} (architecture {arch})")
        pairs.setdefault(gguf_name, {})[part] = value.astype(np.float32)

    writer = gguf.GGUFWriter(str(out), arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, scaling * r)  # llama.cpp scales by alpha / rank
    for gguf_name, ab in sorted(pairs.items()):
        if set(ab) != {"A", "B"}:
            raise BackendError(f"{folder}: {gguf_name} has lora_{''.join(ab)} only")
        a, b = ab["A"], ab["B"]
        if arch in PERMUTED_QK and gguf_name.endswith(".attn_q"):
            b = _permute(b, n_head)
        elif arch in PERMUTED_QK and gguf_name.endswith(".attn_k"):
            b = _permute(b, n_head_kv)
        writer.add_tensor(f"{gguf_name}.weight.lora_a", np.ascontiguousarray(a))
        writer.add_tensor(f"{gguf_name}.weight.lora_b", np.ascontiguousarray(b))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def gguf_adapter(path: str | Path, base_gguf: Path) -> Path:
    """A GGUF LoRA for ``base_gguf`` from ``path``: a ``.gguf`` file is used as it is; a peft folder is converted
    once into the user cache (``reasonrec.io.cache_dir()/lora``), keyed by the adapter's checksum and the base
    file, so a retrained adapter under the same folder is converted again."""
    path = Path(path).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return path
    if not path.is_dir():
        raise BackendError(f"LoRA adapter {path}: neither a .gguf file nor a peft adapter folder")
    stat = base_gguf.stat()
    key = hashlib.sha256(f"{adapter_checksum(path)}|{base_gguf.name}|{stat.st_size}".encode()).hexdigest()[:20]
    out = lora_cache() / f"{path.name}.{key}.gguf"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with io.atomic_path(out) as tmp:
        convert(path, base_gguf, Path(tmp))
    return out


def adapter_backend(requested: str, base_model: str) -> tuple[str, str]:
    """The backend to serve trained LoRA adapters of ``base_model`` on: (backend, reason).

    ``auto`` = llama.cpp where it is the measured faster path: no GPU, llama-cpp-python installed and the base
    model has a GGUF beside its Hugging Face weights (the bundled alias); otherwise transformers (vLLM is only
    ever chosen explicitly). On this project's 2-core EPYC (AVX512-BF16, no AMX) R4ec's inference stage with its
    adapters ran 2.83× faster on llama.cpp BF16 than on transformers bf16 (``benchmarks/r4ec_infer.py``, a loaded
    machine; README "Benchmarks")."""
    if requested != "auto":
        return requested, "requested"
    import importlib.util

    from . import bundled

    if base_model != bundled.SMOLLM2:
        return "transformers", f"{base_model} has no bundled GGUF for llama.cpp"
    if importlib.util.find_spec("llama_cpp") is None:
        return "transformers", "llama-cpp-python is not installed"
    import torch

    if torch.cuda.is_available():
        return "transformers", "a GPU is available"
    return "llamacpp", "CPU: llama.cpp BF16 with GGUF-converted adapters is the faster path"
