"""LLM trainers on transformers + peft + trl: LoRA SFT, softmax-DPO, GRPO, the mixed Yes/No trainer and LoRA experts.

Every trainer is ``train_<name>(cfg, df=None, callbacks=()) -> TrainResult`` with a config from
:mod:`reasonrec.train.config`; losses are plain functions in :mod:`reasonrec.train.losses`. Heavy modules are
imported lazily (``from reasonrec.train.sft import train_sft``).
"""

from .config import (
    TRAINER_CONFIGS,
    ExpertsSection,
    GRPOConfig,
    LoraSection,
    ModelSection,
    SDPOConfig,
    SFTConfig,
    SoftTokenSection,
    TrainingSection,
    YesNoConfig,
)

__all__ = [
    "TRAINER_CONFIGS", "ExpertsSection", "GRPOConfig", "LoraSection", "ModelSection", "SDPOConfig", "SFTConfig",
    "SoftTokenSection", "TrainingSection", "YesNoConfig",
]
