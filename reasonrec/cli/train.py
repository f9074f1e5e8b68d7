"""`reasonrec train sft|sdpo|grpo|yesno CONFIG.yaml`: run one trainer from a YAML config and a JSONL/Parquet file.

The YAML is a :mod:`reasonrec.train.config` trainer config (``model``, ``data``, ``training`` + the trainer's own
fields). A finished run is skipped; an interrupted one resumes from its newest checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(no_args_is_help=True)

ConfigArg = Annotated[Path, typer.Argument(help="Trainer YAML (model / data / training sections).")]
TrainOpt = Annotated[Path | None, typer.Option("--train", help="Training file; overrides data.train.")]
OutOpt = Annotated[Path | None, typer.Option("--output-dir", help="Overrides training.output_dir.")]
StopOpt = Annotated[int | None, typer.Option("--stop-after", help="Stop after N optimizer steps (checkpoint "
                                                                        "kept; rerun to resume).")]


def _run(kind: str, config: Path, train: Path | None, output_dir: Path | None, stop_after: int | None) -> None:
    from ..config import load_yaml
    from ..train import config as C
    from ..train.common import stop_after_steps

    overrides = {}
    if train is not None:
        overrides["data.train"] = str(train)
    if output_dir is not None:
        overrides["training.output_dir"] = str(output_dir)
    cfg = load_yaml(C.TRAINER_CONFIGS[kind], config, overrides)
    callbacks = [stop_after_steps(stop_after)] if stop_after else []
    if kind == "sft":
        from ..train.sft import train_sft as fn
    elif kind == "sdpo":
        from ..train.sdpo import train_sdpo as fn
    elif kind == "grpo":
        from ..train.grpo import train_grpo as fn
    else:
        from ..train.yesno import train_yesno as fn
    result = fn(cfg, callbacks=callbacks)
    if result.skipped:
        typer.echo(f"{kind}: already complete: {result.adapter_dir}")
    elif result.adapter_dir.exists():
        last = result.losses[-1] if result.losses else float("nan")
        typer.echo(f"{kind}: adapter saved to {result.adapter_dir} (last logged loss {last:.4f}, "
                   f"{result.seconds:.1f}s)")
    else:
        typer.echo(f"{kind}: stopped early; checkpoint in {result.output_dir} (rerun to resume)")


@app.command()
def sft(config: ConfigArg, train: TrainOpt = None, output_dir: OutOpt = None, stop_after: StopOpt = None) -> None:
    """LoRA SFT on (prompt, completion) pairs, loss on the completion (trl SFTTrainer)."""
    _run("sft", config, train, output_dir, stop_after)


@app.command()
def sdpo(config: ConfigArg, train: TrainOpt = None, output_dir: OutOpt = None, stop_after: StopOpt = None) -> None:
    """Softmax-DPO with one chosen and K rejected completions per prompt (TrackRec Eq. 4)."""
    _run("sdpo", config, train, output_dir, stop_after)


@app.command()
def grpo(config: ConfigArg, train: TrainOpt = None, output_dir: OutOpt = None, stop_after: StopOpt = None) -> None:
    """GRPO (trl GRPOTrainer) with the STARec rank reward or the 'Yes' smoke reward."""
    _run("grpo", config, train, output_dir, stop_after)


@app.command()
def yesno(config: ConfigArg, train: TrainOpt = None, output_dir: OutOpt = None, stop_after: StopOpt = None) -> None:
    """Mixed Yes/No trainer: BCE on the Yes logit + LM loss on the answer (ThinkRec Eq. 4-7)."""
    _run("yesno", config, train, output_dir, stop_after)
