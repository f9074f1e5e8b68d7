"""Trainer configs: one :class:`~reasonrec.config.Section` per trainer, documented in trl's format.

Every trainer config has the same three parts: ``model`` (base model + LoRA), ``data`` (where the samples are and
which columns hold what) and the training fields shared by all trainers (:class:`TrainingSection`). The
trainer-specific fields (β, group size, loss weights, ...) sit at the top level of each config, with the paper or
code they come from.

Defaults are checked against the papers and official code; where they differ, the docstring says which we follow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from ..config import Section


class LoraSection(Section):
    """LoRA adapter (peft ``LoraConfig``).

    Fields:
        r (`int`, defaults to `8`): LoRA rank. Source: CoLLM / ThinkRec configs (r 8), TALLRec (r 8).
        alpha (`int`, defaults to `16`): LoRA α; the update is scaled by α / r. Source: CoLLM / ThinkRec (16).
        dropout (`float`, defaults to `0.05`): dropout on the LoRA input. Source: CoLLM / ThinkRec (0.05).
        targets (`"q_v"`, `"all-linear"` or a list of module names, defaults to `"q_v"`): which linear layers get
            an adapter. ``q_v`` = ``q_proj`` + ``v_proj`` (CoLLM, ThinkRec, TALLRec); ``all-linear`` = every linear
            layer but the LM head (R4ec).
        layers (`list[int]` or `None`, defaults to `None`): only these decoder layers get an adapter (negative
            numbers count from the end); ``None`` = all. ThinkRec's experts use the last 8 layers.
    """

    r: int = Field(8, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    targets: Literal["q_v", "all-linear"] | list[str] = "q_v"
    layers: list[int] | None = None


class ModelSection(Section):
    """Which model to train.

    Fields:
        name (`str`, defaults to `"smollm2-135m"`): bundled alias (``smollm2-135m``, ``tiny``), a local folder or
            a Hugging Face id of a causal LM.
        init_adapter (`Path` or `None`, defaults to `None`): a saved LoRA folder to continue training from (e.g.
            the SFT adapter before S-DPO / GRPO, the global LoRA before experts). Its LoRA settings win over
            ``lora``. For preference training, the reference is this adapter, frozen (as trl does), not the base.
        lora (`LoraSection`): the new adapter, when ``init_adapter`` is not given.
        trainable_last_layers (`int` or `None`, defaults to `None`): train only the LoRA weights of the last N
            decoder layers (the rest stay frozen); ThinkRec's experts fine-tune the global LoRA on the last 8.
        gradient_checkpointing (`bool`, defaults to `False`): trade compute for memory on long prompts.
    """

    name: str = "smollm2-135m"
    init_adapter: Path | None = None
    lora: LoraSection = Field(default_factory=LoraSection)
    trainable_last_layers: int | None = Field(None, ge=1)
    gradient_checkpointing: bool = False


class DataFileSection(Section):
    """Training samples: a JSONL or Parquet file whose columns the trainer names below.

    Fields:
        train (`Path`): the training file (``.jsonl``, ``.json`` or ``.parquet``).
        limit (`int` or `None`, defaults to `None`): use only the first N rows (smoke runs).
    """

    train: Path
    limit: int | None = Field(None, ge=1)


class TrainingSection(Section):
    """Fields shared by every trainer (a subset of transformers ``TrainingArguments``, named the same).

    Fields:
        output_dir (`Path`): checkpoints go to ``output_dir/checkpoint-N``, the final adapter to
            ``output_dir/adapter`` (peft ``save_pretrained`` format) and the loss log to ``output_dir/train_log.json``.
        seed (`int`, defaults to `0`): seeds model init, data order, dropout and sampling.
        learning_rate (`float`, defaults to `1e-4`): AdamW learning rate. Source: CoLLM / ThinkRec (1e-4).
        weight_decay (`float`, defaults to `0.0`): AdamW weight decay (ThinkRec / CoLLM use 1e-3).
        num_train_epochs (`float`, defaults to `1.0`): passes over the data (ignored when ``max_steps`` > 0).
        max_steps (`int`, defaults to `-1`): total optimizer steps; -1 = derived from epochs.
        per_device_train_batch_size (`int`, defaults to `4`): samples (prompts) per forward pass.
        gradient_accumulation_steps (`int`, defaults to `1`): forward passes per optimizer step.
        lr_scheduler_type (`"linear"`, `"cosine"` or `"constant"`, defaults to `"linear"`).
        warmup_ratio (`float`, defaults to `0.0`): share of the steps with linear warm-up.
        max_grad_norm (`float`, defaults to `1.0`): gradient clipping.
        logging_steps (`int`, defaults to `10`): log losses every N optimizer steps.
        save_steps (`int`, defaults to `100`): write a resumable checkpoint every N optimizer steps.
        save_total_limit (`int` or `None`, defaults to `2`): keep only the newest N checkpoints.
        resume (`bool`, defaults to `True`): continue from the newest checkpoint in ``output_dir`` if there is one.
        precision (`"auto"`, `"fp32"`, `"bf16"`, `"fp16"`, defaults to `"auto"`): ``auto`` = bf16 where the
            device computes it natively (CPUs with AMX or AVX512-BF16, bf16 GPUs), else fp32; the choice is logged
            (:func:`reasonrec.llm.device.resolve_dtype`). fp16 only makes sense on GPUs.
        bf16_mode (`"weights"` or `"autocast"`, defaults to `"weights"`): how bf16 runs. ``weights`` = the frozen
            base model in bf16, the LoRA weights (the optimizer's master weights) in fp32; ``autocast`` = fp32
            weights, forward autocast to bf16 by accelerate. ``weights`` is the default: half the weight memory,
            no per-call casts, bf16 rollouts for GRPO's generation, and robust when one process trains several
            adapters (accelerate keeps one mixed-precision state per process, so a later autocast trainer after
            an fp32 one silently runs fp32). Its cost: the residual stream is bf16 (a 20-step SFT curve on the
            tiny model stays within 3 % of fp32's, tests/test_train_lean.py).
        lean_logits (`bool`, defaults to `True`): SFT computes the LM head only on the completion tokens and the
            cross-entropy in chunks (same loss; the (B, T, V) logits of a 49k vocabulary over every prompt token
            were most of a step's memory). ``False`` = the plain full-sequence path of trl's ``SFTTrainer``.
        max_length (`int`, defaults to `1024`): prompt + completion tokens kept (longer ones are cut from the left
            of the prompt for our own trainers; trl's rules for SFT / GRPO).
    """

    output_dir: Path
    seed: int = 0
    learning_rate: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    num_train_epochs: float = Field(1.0, gt=0)
    max_steps: int = -1
    per_device_train_batch_size: int = Field(4, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    lr_scheduler_type: Literal["linear", "cosine", "constant"] = "linear"
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    max_grad_norm: float = Field(1.0, gt=0)
    logging_steps: int = Field(10, ge=1)
    save_steps: int = Field(100, ge=1)
    save_total_limit: int | None = 2
    resume: bool = True
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    bf16_mode: Literal["weights", "autocast"] = "weights"
    lean_logits: bool = True
    max_length: int = Field(1024, ge=8)


class _TrainerConfig(Section):
    model: ModelSection = Field(default_factory=ModelSection)
    data: DataFileSection
    training: TrainingSection


class SFTConfig(_TrainerConfig):
    """LoRA supervised fine-tuning on (prompt, completion) pairs, loss on the completion only (trl ``SFTTrainer``).

    Used by R4ec (actor / reflection), TrackRec (distillation, Rec-tuning) and STARec (SFT anchoring).

    Fields:
        prompt_column (`str`, defaults to `"prompt"`), completion_column (`str`, defaults to `"completion"`):
            the columns holding the user turn and the assistant answer (plain strings).
        system_column (`str` or `None`, defaults to `None`): optional column with a system message.
        chat_template (`bool`, defaults to `True`): wrap prompt and completion as a user / assistant chat and
            apply the tokenizer's chat template; ``False`` trains on the raw concatenation.
    """

    prompt_column: str = "prompt"
    completion_column: str = "completion"
    system_column: str | None = None
    chat_template: bool = True


class SDPOConfig(_TrainerConfig):
    """Softmax-DPO with one chosen and K rejected completions per prompt (TrackRec Eq. 4, S-DPO).

    Fields:
        beta (`float`, defaults to `0.1`): β of Eq. (4). Source: TrackRec official code (0.1); S-DPO uses 1.0.
        prompt_column (`str`, defaults to `"prompt"`), chosen_column (`str`, defaults to `"chosen"`): strings.
        rejected_column (`str`, defaults to `"rejected"`): a list of K ≥ 1 strings (a single string is K = 1).
        chat_template (`bool`, defaults to `True`): as in :class:`SFTConfig`.
        share_prompt (`bool`, defaults to `True`): run each prompt once and reuse its KV cache for its 1 + K
            completions (same result; ≈ (1 + K)× less compute when prompts dominate). ``False`` = one full
            sequence per completion, as trl's DPO trainer. Needs the KV cache, so it cannot be combined with
            ``model.gradient_checkpointing`` (which turns the cache off in training). With LoRA dropout on, the
            prompt's dropout mask is shared by its 1 + K completions (one draw per prompt instead of per row).
    """

    beta: float = Field(0.1, gt=0)
    prompt_column: str = "prompt"
    chosen_column: str = "chosen"
    rejected_column: str = "rejected"
    chat_template: bool = True
    share_prompt: bool = True

    @model_validator(mode="after")
    def _share_needs_cache(self) -> SDPOConfig:
        # transformers drops past_key_values inside checkpointed layers during training, so the completions would
        # silently lose their prompt.
        if self.share_prompt and self.model.gradient_checkpointing:
            raise ValueError(
                "sdpo: share_prompt=true reuses the prompt's KV cache, which model.gradient_checkpointing=true "
                "disables during training; set share_prompt: false (one full sequence per completion) or turn "
                "gradient_checkpointing off"
            )
        return self


class GRPOConfig(_TrainerConfig):
    """GRPO (trl ``GRPOTrainer``) with plain-Python reward functions.

    Fields:
        reward (`"rank"`, `"yes"`, defaults to `"rank"`): which built-in reward; ``rank`` is STARec's rank reward
            (needs the columns named by ``target_column``), ``yes`` rewards an answer whose first word is "Yes"
            (a smoke-test reward). Memory-update rewards need a ranking callable, so they are passed from Python
            (:func:`reasonrec.train.grpo.memory_update_reward`), not from YAML.
        target_column (`str`, defaults to `"target_title"`): the column holding the held-out item for ``rank``.
        candidates_column (`str`, defaults to `"candidates"`): the titles the prompt showed (a list, or one per
            line); ``rank`` reads the completion with the evaluation's ranking parser over them.
        prompt_column (`str`, defaults to `"prompt"`).
        system_column (`str`, optional): a column of system messages (chat template only).
        num_generations (`int`, defaults to `8`): group size G. Source: STARec (8 rollouts per prompt).
        beta (`float`, defaults to `1e-3`): KL coefficient. Source: STARec (1e-3), as DeepSeek-R1.
        max_completion_length (`int`, defaults to `256`): tokens generated per completion.
        temperature (`float`, defaults to `1.0`): sampling temperature of the rollouts.
        chat_template (`bool`, defaults to `True`): send the prompt as a user turn.
        generation_kwargs (`dict`, defaults to `{}`): extra ``GenerationConfig`` fields for the rollouts (e.g.
            ``suppress_tokens`` for constrained answers, ``top_p``).
    """

    reward: Literal["rank", "yes"] = "rank"
    target_column: str = "target_title"
    candidates_column: str = "candidates"
    prompt_column: str = "prompt"
    system_column: str | None = None
    num_generations: int = Field(8, ge=2)
    beta: float = Field(1e-3, ge=0)
    max_completion_length: int = Field(256, ge=1)
    temperature: float = Field(1.0, gt=0)
    chat_template: bool = True
    generation_kwargs: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _group_divides_batch(self) -> GRPOConfig:
        # trl samples G completions per prompt inside one generation batch; the batch must hold whole groups.
        bs = self.training.per_device_train_batch_size * self.training.gradient_accumulation_steps
        if bs % self.num_generations:
            raise ValueError(
                f"grpo: training.per_device_train_batch_size × gradient_accumulation_steps = {bs} must be a multiple "
                f"of num_generations = {self.num_generations}; set per_device_train_batch_size to "
                f"{self.num_generations} (one prompt per step) or a multiple of it"
            )
        return self


class SoftTokenSection(Section):
    """Soft-token input (CoLLM / ThinkRec): a vector projected into the token space at a placeholder token.

    Fields:
        column (`str`, defaults to `"soft_emb"`): column holding, per sample, one vector per placeholder
            occurrence (a list of vectors, or one vector when the prompt has one placeholder).
        placeholder (`str` or `None`, defaults to `None`): the placeholder token in the prompt text; must be a
            single token. ``None`` = the tokenizer's unk token (CoLLM / ThinkRec use ``<unk>``).
        hidden_mult (`int`, defaults to `5`): MLP width = input dim × hidden_mult. Source: ThinkRec ``proj_mid``
            (5 for ML-100K).
        train_lora (`bool`, defaults to `False`): also train the LoRA; ThinkRec's staged training keeps it frozen
            while the projector trains.
    """

    column: str = "soft_emb"
    placeholder: str | None = None
    hidden_mult: int = Field(5, ge=1)
    train_lora: bool = False


class YesNoConfig(_TrainerConfig):
    """Mixed Yes/No trainer: BCE on the Yes-vs-No logit at the first answer position + LM loss on the answer
    (ThinkRec Eq. 4-7; TALLRec, CoLLM).

    Fields:
        prompt_column (`str`, defaults to `"prompt"`), label_column (`str`, defaults to `"label"`, 0/1).
        answer_column (`str`, defaults to `"answer"`): the answer text, which starts with "Yes" or "No"; for
            reasoning samples it continues with the reason. Empty / missing = the bare "Yes" / "No" from the label.
        kind_column (`str`, defaults to `"kind"`): ``reason`` or ``label`` per row; missing = ``reason`` when the
            answer is longer than the bare Yes/No, else ``label``.
        reason_weights (`[bce, lm]`, defaults to `[0.1, 0.9]`), label_weights (`[bce, lm]`, defaults to
            `[0.9, 0.1]`): loss weights per instance type. Source: ThinkRec code (``loss_alpha/beta`` for reasoning
            batches, ``loss_theta/gamma`` for label batches, 0.1/0.9 and 0.9/0.1 in its train configs).
        reason_share (`float` or `None`, defaults to `0.2`): share of reasoning samples in the mixed training set
            (ThinkRec mixes reasoning : recommendation data 0.2 : 0.8); ``None`` keeps the file as it is.
        score (`"yes_vs_no"`, `"yes_logit"`, defaults to `"yes_vs_no"`): the BCE logit. ``yes_vs_no`` =
            logit(Yes) − logit(No), i.e. the log-odds of P(Yes | Yes or No), the score the LLM interface's
            ``choice_probs`` returns; ``yes_logit`` = the raw Yes logit, as ThinkRec's and CoLLM's code.
        yes_token (`str`, defaults to `"Yes"`), no_token (`str`, defaults to `"No"`): must be single tokens.
        chat_template (`bool`, defaults to `True`).
        soft_token (`SoftTokenSection` or `None`, defaults to `None`): enable the projected soft-token input.
    """

    prompt_column: str = "prompt"
    label_column: str = "label"
    answer_column: str = "answer"
    kind_column: str = "kind"
    reason_weights: tuple[float, float] = (0.1, 0.9)
    label_weights: tuple[float, float] = (0.9, 0.1)
    reason_share: float | None = Field(0.2, gt=0, lt=1)
    score: Literal["yes_vs_no", "yes_logit"] = "yes_vs_no"
    yes_token: str = "Yes"
    no_token: str = "No"
    chat_template: bool = True
    soft_token: SoftTokenSection | None = None


class ExpertsSection(Section):
    """ThinkRec §3.3 expert LoRAs: user clustering, per-group fine-tuning and the gate.

    Fields:
        method (`"kmeans"`, `"ward"`, defaults to `"kmeans"`): clustering of the standardised user embeddings.
        k (`int` or `"auto"`, defaults to `"auto"`): number of groups; ``auto`` = best silhouette over
            ``k_range``. ThinkRec finds 2-3 best (Fig. 3).
        k_range (`[lo, hi]`, defaults to `[2, 10]`): candidate k for ``auto``.
        last_layers (`int`, defaults to `8`): experts fine-tune the global LoRA on the last N decoder layers only.
            Source: ThinkRec §3.3.1 ("the last 8 layers").
        tau (`float`, defaults to `0.1`): gate temperature, softmax(cos / τ). Source: ThinkRec code (0.1).
        single_margin (`float`, defaults to `0.6`): a user whose top weight > 0.5 + single_margin / N uses that
            expert alone. Source: ThinkRec code (0.5 + 0.6 / n_clusters).
        entropy_threshold (`float`, defaults to `0.95`): a user whose gate entropy ≥ threshold × log N uses the
            global LoRA. Source: ThinkRec code (0.95).
    """

    method: Literal["kmeans", "ward"] = "kmeans"
    k: int | Literal["auto"] = "auto"
    k_range: tuple[int, int] = (2, 10)
    last_layers: int = Field(8, ge=1)
    tau: float = Field(0.1, gt=0)
    single_margin: float = Field(0.6, ge=0)
    entropy_threshold: float = Field(0.95, gt=0, le=1)


TRAINER_CONFIGS: dict[str, type[_TrainerConfig]] = {
    "sft": SFTConfig, "sdpo": SDPOConfig, "grpo": GRPOConfig, "yesno": YesNoConfig,
}
