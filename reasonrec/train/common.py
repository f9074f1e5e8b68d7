"""What every trainer shares: model + LoRA loading, TrainingArguments, data files, resume and the final save.

A training run owns one ``output_dir``::

    output_dir/checkpoint-N/    resumable checkpoints (adapter, optimizer, scheduler, RNG states, trainer state)
    output_dir/adapter/         the final LoRA, peft ``save_pretrained`` format (+ tokenizer), written atomically
    output_dir/train_log.json   every logged loss / metric (Trainer ``log_history``) and the resolved config

A run whose ``adapter/`` and ``train_log.json`` exist is complete and is skipped; an interrupted one resumes from its
newest checkpoint (same weights as an uninterrupted run with the same seed: the Trainer restores optimizer,
scheduler, data position and RNG states).
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import io
from ..errors import ConfigError, DataError
from ..llm.device import DtypeChoice, resolve_dtype
from .config import LoraSection, ModelSection, TrainingSection

log = logging.getLogger(__name__)

TARGETS = {"q_v": ["q_proj", "v_proj"], "all-linear": "all-linear"}


@dataclass
class TrainResult:
    """What a trainer returns: where the adapter is and what was logged."""

    output_dir: Path
    adapter_dir: Path
    log_history: list[dict[str, Any]] = field(default_factory=list)
    skipped: bool = False
    seconds: float = 0.0

    @property
    def losses(self) -> list[float]:
        return [row["loss"] for row in self.log_history if "loss" in row]


def resolve_model_path(name: str) -> str:
    """A bundled alias (``smollm2-135m``, ``tiny``), a local folder or a Hugging Face id, as a loadable path."""
    from ..llm import bundled

    if name == bundled.SMOLLM2:
        return str(bundled.smollm2_hf_dir())
    if name in ("tiny", "tiny-random"):  # "tiny-random" is the LLM backends' alias of the same model
        return str(bundled.tiny_model())
    return name


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(resolve_model_path(name))
    except (OSError, ValueError) as err:
        raise ConfigError(f"model.name: cannot load the tokenizer of '{name}': {err}") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def lora_config(lora: LoraSection, num_layers: int):
    """peft ``LoraConfig`` for causal-LM training from our :class:`LoraSection`."""
    from peft import LoraConfig

    layers = None
    if lora.layers is not None:
        layers = sorted({i % num_layers for i in lora.layers})
        bad = [i for i in lora.layers if not -num_layers <= i < num_layers]
        if bad:
            raise ConfigError(f"model.lora.layers: {bad} out of range for a model with {num_layers} layers")
    return LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
        target_modules=TARGETS.get(lora.targets, lora.targets) if isinstance(lora.targets, str) else lora.targets,
        layers_to_transform=layers, layers_pattern="layers" if layers is not None else None,
        bias="none", task_type="CAUSAL_LM",
    )


def load_base_model(name: str, dtype: str = "float32"):
    """The base causal LM with weights in ``dtype`` (see :func:`precision_plan`)."""
    import torch
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(name)
    try:
        return AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    except (OSError, ValueError) as err:
        raise ConfigError(f"model.name: cannot load '{name}' ({path}): {err}") from None


def load_peft_model(model_cfg: ModelSection, *, with_ref: bool = False, dtype: str = "float32"):
    """Base model (weights in ``dtype``) + a trainable LoRA: a new one from ``model_cfg.lora``, or ``init_adapter``
    to continue. The LoRA weights stay float32 whatever ``dtype`` is (peft's ``autocast_adapter_dtype``, on by
    default, upcasts bf16 adapters), so they are fp32 master weights for the optimizer.

    With ``with_ref`` and an ``init_adapter``, the same adapter is also loaded frozen under the name ``ref`` (the
    reference policy of preference training, as trl does when re-training an existing adapter).
    """
    from peft import PeftModel, get_peft_model

    base = load_base_model(model_cfg.name, dtype)
    if model_cfg.init_adapter is not None:
        path = Path(model_cfg.init_adapter)
        if not (path / "adapter_config.json").exists():
            raise ConfigError(f"model.init_adapter: {path} has no adapter_config.json (expected a peft LoRA folder)")
        model = PeftModel.from_pretrained(base, str(path), is_trainable=True)
        if with_ref:
            model.load_adapter(str(path), adapter_name="ref", is_trainable=False)
            model.set_adapter("default")
    else:
        model = get_peft_model(base, lora_config(model_cfg.lora, base.config.num_hidden_layers))
    if model_cfg.trainable_last_layers is not None:
        freeze_lora_outside_last(model, model_cfg.trainable_last_layers)
    if model_cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    return model


_LAYER = re.compile(r"\.layers\.(\d+)\.")


def freeze_lora_outside_last(model, n_last: int) -> int:
    """Freeze every trainable LoRA weight outside the last ``n_last`` decoder layers; returns how many stay trainable."""
    n_layers = model.get_base_model().config.num_hidden_layers
    first = max(0, n_layers - n_last)
    kept = 0
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        m = _LAYER.search(name)
        if m is None or int(m.group(1)) < first:
            p.requires_grad_(False)
        else:
            kept += p.numel()
    if kept == 0:
        raise ConfigError(f"model.trainable_last_layers={n_last}: no LoRA weight lies in layers {first}..{n_layers - 1}")
    return kept


@dataclass(frozen=True)
class PrecisionPlan:
    """How a trainer computes: the base weights' dtype and the Trainer's autocast flags."""

    weights_dtype: str
    bf16: bool
    fp16: bool
    choice: DtypeChoice


def precision_plan(t: TrainingSection, where: str = "train") -> PrecisionPlan:
    """``t.precision`` → weights dtype + Trainer flags.

    ``auto`` = bf16 where the device computes it natively (:func:`reasonrec.llm.device.resolve_dtype`: AMX or
    AVX512-BF16 CPUs, bf16 GPUs), else fp32. bf16 runs as ``t.bf16_mode``: ``weights`` loads the frozen base in
    bf16 and keeps the LoRA in fp32 (no autocast); ``autocast`` keeps fp32 weights and lets the Trainer autocast
    the forward to bf16. fp16 (GPU only) is always autocast, with the Trainer's loss scaling.
    """
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    requested = {"auto": "auto", "fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[t.precision]
    choice = resolve_dtype(requested, device, where=where)
    if choice.dtype == "bfloat16" and t.bf16_mode == "weights":
        return PrecisionPlan("bfloat16", False, False, choice)
    return PrecisionPlan("float32", choice.dtype == "bfloat16", choice.dtype == "float16", choice)


def training_kwargs(t: TrainingSection) -> dict[str, Any]:
    """The TrainingArguments fields every trainer sets the same way."""
    plan = precision_plan(t)
    return dict(
        output_dir=str(t.output_dir), seed=t.seed, data_seed=t.seed, learning_rate=t.learning_rate,
        weight_decay=t.weight_decay, num_train_epochs=t.num_train_epochs, max_steps=t.max_steps,
        per_device_train_batch_size=t.per_device_train_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps, lr_scheduler_type=t.lr_scheduler_type,
        warmup_steps=t.warmup_ratio, max_grad_norm=t.max_grad_norm, logging_steps=t.logging_steps,
        save_strategy="steps", save_steps=t.save_steps, save_total_limit=t.save_total_limit,
        report_to="none", dataloader_num_workers=0, disable_tqdm=False, logging_first_step=True,
        bf16=plan.bf16, fp16=plan.fp16,
        # transformers refuses bf16 autocast on a CPU-only machine unless told the CPU is meant
        use_cpu=plan.choice.device == "cpu",
    )


def read_table(path: str | Path, columns: list[str], limit: int | None = None):
    """Read a JSONL / JSON / Parquet file into a pandas DataFrame and check it has ``columns``."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: training file not found")
    try:
        if path.suffix == ".parquet":
            df = pd.read_parquet(path)
        elif path.suffix in (".jsonl", ".json"):
            df = pd.read_json(path, lines=path.suffix == ".jsonl")
        else:
            raise DataError(f"{path}: unsupported file type '{path.suffix}'; use .jsonl, .json or .parquet")
    except ValueError as err:
        raise DataError(f"{path}: cannot parse ({err})") from None
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; it has {list(df.columns)} "
                        f"(set the trainer's *_column options to the right names)")
    if len(df) == 0:
        raise DataError(f"{path}: no rows")
    return df.head(limit) if limit else df


def to_dataset(df):
    from datasets import Dataset

    return Dataset.from_pandas(df.reset_index(drop=True), preserve_index=False)


def is_complete(output_dir: Path) -> bool:
    return (output_dir / "adapter" / "adapter_config.json").exists() and (output_dir / "train_log.json").exists()


def last_checkpoint(output_dir: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    if not output_dir.is_dir():
        return None
    return get_last_checkpoint(str(output_dir))


def run_training(trainer, cfg, *, tokenizer=None, save_fn=None) -> TrainResult:
    """Train (resuming from the newest checkpoint when ``cfg.training.resume``), then save the adapter atomically.

    ``save_fn(folder)`` overrides how the final model is written (default: ``trainer.model.save_pretrained``).
    Returns early, without saving a final adapter, when a callback stopped training before ``max_steps`` — the
    checkpoint is what a later run resumes from.
    """
    t0 = time.time()
    out = Path(cfg.training.output_dir)
    resume = last_checkpoint(out) if cfg.training.resume else None
    if resume:
        log.info("resuming from %s", resume)
    trainer.train(resume_from_checkpoint=resume)
    state = trainer.state
    result = TrainResult(out, out / "adapter", list(state.log_history), seconds=time.time() - t0)
    if state.max_steps and state.global_step < state.max_steps:  # stopped early (e.g. a stop callback)
        return result
    # Under `accelerate launch` (DDP/FSDP: README, "Running on a cluster") every process trains; one writes.
    # FSDP shards the weights, so every rank takes part in gathering them; only the main rank writes files.
    if getattr(trainer, "is_fsdp_enabled", False):
        trainer.accelerator.wait_for_everyone()
        state_dict = trainer.accelerator.get_state_dict(trainer.model)
    else:
        state_dict = None
    if not trainer.is_world_process_zero():
        trainer.accelerator.wait_for_everyone()
        return result
    with io.atomic_dir(out / "adapter") as tmp:
        if save_fn is not None:
            save_fn(tmp)
        else:
            trainer.model.save_pretrained(tmp, selected_adapters=["default"], state_dict=state_dict)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    io.write_json(out / "train_log.json", {
        "config": cfg.model_dump(mode="json"), "global_step": state.global_step,
        "seconds": round(result.seconds, 3), "log_history": result.log_history,
        "world_size": trainer.args.world_size,
    })
    trainer.accelerator.wait_for_everyone()
    return result


def skipped_result(cfg) -> TrainResult:
    import json

    out = Path(cfg.training.output_dir)
    info = json.loads((out / "train_log.json").read_text())
    return TrainResult(out, out / "adapter", info.get("log_history", []), skipped=True)


def chat_messages(prompt: str, completion: str | None = None, system: str | None = None) -> list[dict[str, str]]:
    msgs = [{"role": "system", "content": system}] if system else []
    msgs.append({"role": "user", "content": prompt})
    if completion is not None:
        msgs.append({"role": "assistant", "content": completion})
    return msgs


def encode_pair(tokenizer, prompt: str, completions: list[str], *, chat: bool,
                system: str | None = None) -> tuple[list[int], list[list[int]]]:
    """Token ids of a prompt and of each completion after it, split the way trl's DPO trainer splits them.

    With ``chat``, the prompt is rendered with the generation prompt and each completion as the assistant turn
    (ending in the template's end-of-turn); without, completions get the EOS token appended. The completion starts
    where the tokenised prompt and prompt + completion diverge (tokens can merge across the boundary).
    """
    def ids(x, **kw) -> list[int]:
        if chat:
            out = tokenizer.apply_chat_template(x, tokenize=True, return_dict=True, **kw)
            return list(out["input_ids"])
        return list(tokenizer(text=x)["input_ids"])

    if chat:
        prompt_ids = ids(chat_messages(prompt, None, system), add_generation_prompt=True)
        fulls = [ids(chat_messages(prompt, c, system)) for c in completions]
    else:
        eos = tokenizer.eos_token
        prompt_ids = ids(prompt)
        fulls = [ids(prompt + (c if c.endswith(eos) else c + eos)) for c in completions]
    cut = min(_common_prefix(prompt_ids, f) for f in fulls)
    return prompt_ids[:cut], [f[cut:] for f in fulls]


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def fit_length(prompt_ids: list[int], completion_ids: list[list[int]], max_length: int):
    """Cut the prompt from the left (keeping its end, next to the answer) so prompt + longest completion fits;
    completions longer than ``max_length`` alone are cut from the right."""
    longest = max(len(c) for c in completion_ids)
    if longest >= max_length:
        completion_ids = [c[: max_length - 1] for c in completion_ids]
        longest = max_length - 1
    room = max_length - longest
    return prompt_ids[-room:] if len(prompt_ids) > room else prompt_ids, completion_ids


def stop_after_steps(n: int):
    """A Trainer callback that ends training after optimizer step ``n`` (after that step's checkpoint, if due):
    simulates a killed run in tests and bounds smoke runs (``reasonrec train ... --stop-after N``)."""
    from transformers import TrainerCallback

    class StopAfterSteps(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step >= n:
                control.should_training_stop = True
            return control

    return StopAfterSteps()


def adapter_weights(folder: str | Path) -> dict[str, Any]:
    """The tensors of a saved adapter (``adapter_model.safetensors``)."""
    from safetensors.torch import load_file

    return load_file(str(Path(folder) / "adapter_model.safetensors"))
