"""R4ec (RecSys '25): reasoning, reflection and refinement of user-preference and item-fact knowledge, fed
into CTR backbones. A composition of the substrate; the paper's steps map to code as follows:

==========================  ===================================================================================
Algorithm 1, §3.3           :func:`stage_construct` → :func:`~reasonrec.methods.r4ec_steps.construct`
eq. 7-10 (actor, reflector)  :func:`stage_train` → four LoRA SFT runs (:func:`reasonrec.train.sft.train_sft`)
§3.5 inference              :func:`stage_infer` → ``iterative_refinement`` and ``reflection_filter``
eq. 11-12                   :func:`stage_encode` (knowledge encoder) and :func:`stage_rec` (connectors + backbones)
==========================  ===================================================================================

Every stage writes into the run directory and is skipped when complete; LLM calls go through the persistent
generation cache, so an interrupted stage resumes without asking the model twice.

Ablations written to ``results.json`` (same test samples, same seeds): ``base`` (backbone alone), ``system1``
(the actor's first answer only: KAR-like System-1 knowledge), ``refine`` (iterative refinement) and ``filter``
(reflection as a filter).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field, field_validator

from .. import io
from ..config import DataSection, Section
from ..llm.base import LLMSection
from ..runs import RunDir
from . import r4ec_steps as steps
from .common import prepare_splits, train_knowledge_backbones

VARIANTS = ("base", "system1", "refine", "filter")


class SubsetSection(Section):
    """Which part of the data the LLM stages cover (the CPU config cannot reason about every user).

    Fields:
        users: users sampled (seeded) from the split; ``None`` = all. Their samples form the CTR data.
        items: keep only samples whose target item is among the ``items`` most frequent train targets of those
            users; ``None`` = all items.
        construct_fraction: share of users and of items that get one supervision case each for Algorithm 1;
            R4ec §4.1.5 uses 40%.
        pos_neg_users: users who liked / disliked an item shown in the item prompts (each).
        history_len: interactions shown per history in prompts.
    """

    users: int | None = None
    items: int | None = None
    construct_fraction: float = Field(0.4, gt=0, le=1)
    pos_neg_users: int = Field(3, ge=1)
    history_len: int = Field(10, ge=1)


class GenerationSection(Section):
    """Generation settings of every LLM step.

    Fields:
        max_new_tokens: tokens per answer (the prompts ask for 200 words; the CPU config caps it lower).
        max_attempts: tries per malformed answer before it is counted as a parse failure.
        max_refine_steps: refinement rounds of the iterative strategy; R4ec §4.1.5 default 1.
        filter_k: actor samples per entity for reflection-as-a-filter; default 3.
        filter_temperature: sampling temperature of those samples.
        prime: start every answer with its opening tag (``<User Preference>``, ``<Final Judgement>`` ...):
            response priming, which small models need to answer in the tagged format at all. Local backends only.
        constrain: constrain decoding to each step's answer format (``reasonrec.llm.specs``: tags, verdict phrases,
            bounded free text), so every answer parses. ``None`` (default) = wherever the backend enforces regex
            constraints (transformers, llama.cpp, vLLM; an HTTP server only with ``options.structured: vllm``);
            ``true`` on a backend that cannot is an error; ``false`` = parse-and-retry only. The run records which
            (``constrained`` in the branch counts). vLLM refuses ``prime`` together with a constraint (it constrains
            the continuation only); the constraint already writes the opening tags.
    """

    max_new_tokens: int = Field(200, ge=8)
    max_attempts: int = Field(2, ge=1)
    max_refine_steps: int = Field(1, ge=0)
    filter_k: int = Field(3, ge=1)
    filter_temperature: float = Field(0.8, gt=0)
    prime: bool = False
    constrain: bool | None = None


def _constrain(g: GenerationSection, llm) -> bool:
    return g.constrain if g.constrain is not None else "constraint:regex" in llm.supports


class ActorTrainSection(Section):
    """LoRA SFT of the actor and reflection models (R4ec §4.1.5 and its code: r 8, α 16, dropout 0.05 on all
    linear layers, lr 1e-4, 3 epochs, cosine schedule, 10% warm-up).

    Fields:
        base_model: the model the four adapters are trained on (and inference runs on).
        epochs, learning_rate, batch_size, max_length: the SFT settings.
        infer_backend: the backend that runs the trained adapters at inference (§3.5): ``transformers``
            (CPU/GPU) or ``vllm`` (GPU throughput, adapters served as LoRA requests).
        infer_options: options of that backend (e.g. ``dtype``, ``batch_size``, ``gpu_memory_utilization``).
    """

    base_model: str = "smollm2-135m"
    infer_backend: Literal["transformers", "vllm"] = "transformers"
    infer_options: dict[str, Any] = {}
    epochs: float = Field(3.0, gt=0)
    learning_rate: float = Field(1e-4, gt=0)
    batch_size: int = Field(4, ge=1)
    max_length: int = Field(1024, ge=64)

    @field_validator("infer_options")
    @classmethod
    def _adapters_are_trained(cls, options: dict[str, Any]) -> dict[str, Any]:
        if "adapters" in options:
            raise ValueError("'adapters' is set by the run (the four adapters the train stage writes); remove it "
                             "from train.infer_options")
        return options


class RecSection(Section):
    """The CTR side (eq. 12).

    Fields:
        backbones: CTR models to train for every knowledge variant.
        encoder: knowledge encoder (eq. 11); default the bundled all-MiniLM-L6-v2 (the paper uses BGE-M3).
        seeds: one CTR run per seed and variant; results are averaged.
        epochs, batch_size: CTR training.
        valid_fraction: the last share of each user's train samples held out for early stopping (kar has no
            validation split).
        history_len: history items the backbones read (KAR ``ctr_hist_len`` = 10).
    """

    backbones: list[str] = Field(default_factory=lambda: ["din", "dcn", "autoint", "gru4rec_ctr"])
    encoder: str = "minilm"
    seeds: list[int] = Field(default_factory=lambda: [0])
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(256, ge=1)
    valid_fraction: float = Field(0.1, ge=0, lt=1)
    history_len: int = Field(10, ge=1)


class Config(Section):
    """An R4ec experiment (``method: r4ec``). See ``configs/r4ec/``."""

    method: Literal["r4ec"] = "r4ec"
    run_dir: Path
    data: DataSection = Field(default_factory=lambda: DataSection(protocol="kar"))
    subset: SubsetSection = Field(default_factory=SubsetSection)
    teacher: LLMSection = Field(default_factory=LLMSection)
    generation: GenerationSection = Field(default_factory=GenerationSection)
    train: ActorTrainSection = Field(default_factory=ActorTrainSection)
    rec: RecSection = Field(default_factory=RecSection)


# ---------------------------------------------------------------------------------------------- stages

def stage_construct(cfg: Config, run: RunDir, ctx) -> dict:
    """Algorithm 1 for users and its §3.3 twin for items, with the teacher."""
    st = run.stage("construct")
    if st.done:
        return st.info()["branches"]
    from ..llm.base import load_llm

    teacher = load_llm(cfg.teacher.name, backend=cfg.teacher.backend,
                       cache=cfg.teacher.cache or run.root / "llm_cache.sqlite", **cfg.teacher.options)
    gen = steps.GenArgs(cfg.generation.max_new_tokens, 0.0, cfg.generation.max_attempts, cfg.data.seed,
                         cfg.generation.prime, constrain=_constrain(cfg.generation, teacher), domain=ctx.domain)
    branches, files = {}, []
    for side in ("user", "item"):
        built = steps.construct(teacher, side, ctx.domain, ctx.cases(side, cfg.subset.construct_fraction), gen)
        for name in ("reason", "reflect", "refine"):
            io.write_parquet(st.path / f"{side}_{name}.parquet", pd.DataFrame(
                getattr(built, name), columns=["key", "system", "prompt", "completion"]))
            files.append(f"{side}_{name}.parquet")
        branches[side] = {**dict(built.branches), **built.parse.as_dict(), "constrained": int(gen.constrain)}
    st.complete(files, branches=branches)
    return branches


def stage_train(cfg: Config, run: RunDir) -> dict[str, Path]:
    """Eq. 7-9: the actor on reasoning + refinement data; eq. 10: the reflection model on reflection data."""
    from ..train.config import SFTConfig
    from ..train.sft import train_sft

    src, adapters = run.stage("construct").path, {}
    for side in ("user", "item"):
        sets = {"actor": ["reason", "refine"], "reflect": ["reflect"]}
        for role, names in sets.items():
            df = pd.concat([pd.read_parquet(src / f"{side}_{n}.parquet") for n in names], ignore_index=True)
            out = run.root / "train" / f"{side}_{role}"
            if df.empty:  # the teacher kept nothing: the role falls back to the base model (recorded)
                adapters[f"{side}_{role}"] = None
                continue
            sft = SFTConfig.model_validate({
                "model": {"name": cfg.train.base_model, "lora": {"targets": "all-linear"}},
                "data": {"train": src / f"{side}_{names[0]}.parquet"},
                "system_column": "system",
                "training": {"output_dir": out, "seed": cfg.data.seed, "learning_rate": cfg.train.learning_rate,
                             "num_train_epochs": cfg.train.epochs, "lr_scheduler_type": "cosine",
                             "warmup_ratio": 0.1, "per_device_train_batch_size": cfg.train.batch_size,
                             "max_length": cfg.train.max_length, "logging_steps": 1},
            })
            run.log(f"train {side}_{role}: LoRA SFT on {len(df)} samples")
            adapters[f"{side}_{role}"] = train_sft(sft, df).adapter_dir
    return adapters


def stage_infer(cfg: Config, run: RunDir, ctx, adapters: dict[str, Path | None]) -> dict:
    """§3.5 for every user and item of the subset: iterative refinement (its first answer is the System-1
    ablation) and reflection as a filter."""
    st = run.stage("infer")
    if st.done:
        return st.info()["stats"]
    from ..llm.base import load_llm

    trained = {name: str(path) for name, path in adapters.items() if path is not None}
    cache = run.root / "llm_cache.sqlite"
    if cfg.train.infer_backend == "vllm":  # vLLM registers LoRA adapters when the engine starts
        llm = load_llm(cfg.train.base_model, backend="vllm", cache=cache, **{"adapters": trained,
                                                                             **cfg.train.infer_options})
    else:
        llm = load_llm(cfg.train.base_model, backend="transformers", cache=cache, **cfg.train.infer_options)
        for name, path in trained.items():
            llm.load_adapter(name, path)
    g = cfg.generation
    gen = steps.GenArgs(g.max_new_tokens, 0.0, g.max_attempts, cfg.data.seed, g.prime, constrain=_constrain(g, llm),
                        domain=ctx.domain)
    stats, files = {}, []
    for side in ("user", "item"):
        ids, entities = ctx.entities(side)
        actor = f"{side}_actor" if adapters.get(f"{side}_actor") else None
        reflector = f"{side}_reflect" if adapters.get(f"{side}_reflect") else None
        ref = steps.iterative_refinement(llm, side, ctx.domain, entities, actor=actor, reflector=reflector,
                                         max_steps=g.max_refine_steps, gen=gen)
        filt = steps.reflection_filter(llm, side, ctx.domain, entities, actor=actor, reflector=reflector,
                                       k=g.filter_k, temperature=g.filter_temperature, gen=gen)
        io.write_parquet(st.path / f"{side}.parquet", pd.DataFrame({
            "entity_id": ids, "system1": ref.first, "refine": ref.final,
            "filter_samples": filt.samples, "filter_keep": filt.keep}))
        files.append(f"{side}.parquet")
        n = max(len(ids), 1)
        stats[side] = {
            "entities": len(ids), "refined": ref.refined,
            "unreasonable_before": ref.judged_unreasonable_first / n,
            "unreasonable_after": ref.judged_unreasonable_final / n,
            "filter_kept_fraction": filt.kept_fraction, "constrained": int(gen.constrain),
            **{f"refine_{k}": v for k, v in ref.parse.as_dict().items()},
            **{f"filter_{k}": v for k, v in filt.parse.as_dict().items()},
        }
    st.complete(files, stats=stats)
    return stats


def stage_encode(cfg: Config, run: RunDir, ctx) -> dict[str, dict[str, np.ndarray]]:
    """Eq. 11: encode the final texts; the filter variant averages the kept samples' vectors (all of them when
    none is kept). Returns ``{variant: {"user": table, "item": table}}`` indexed by id (row 0 = padding)."""
    from ..knowledge import load_encoder

    st = run.stage("encode")
    if not st.done:
        encoder = load_encoder(cfg.rec.encoder)
        for side in ("user", "item"):
            df = pd.read_parquet(run.stage("infer").path / f"{side}.parquet")
            size = ctx.n_entities(side) + 1
            vecs = {}
            for variant in ("system1", "refine"):
                emb = encoder.encode(df[variant].tolist())
                vecs[variant] = _table(size, df["entity_id"], emb)
            flat = [t for row in df["filter_samples"] for t in row]
            emb = encoder.encode(flat).reshape(len(df), -1, vecs["refine"].shape[1])
            keep = np.array([list(k) for k in df["filter_keep"]], dtype=bool)
            keep[~keep.any(axis=1)] = True  # §3.5: none kept → average all
            pooled = (emb * keep[..., None]).sum(1) / keep.sum(1, keepdims=True)
            vecs["filter"] = _table(size, df["entity_id"], pooled)
            with io.atomic_path(st.path / f"{side}.npz") as tmp:
                with open(tmp, "wb") as f:
                    np.savez(f, **vecs)
        st.complete(["user.npz", "item.npz"])
    loaded = {side: np.load(st.path / f"{side}.npz") for side in ("user", "item")}
    return {v: {side: loaded[side][v] for side in ("user", "item")} for v in ("system1", "refine", "filter")}


def _table(size: int, ids, emb: np.ndarray) -> np.ndarray:
    table = np.zeros((size, emb.shape[1]), dtype=np.float32)
    table[np.asarray(ids, dtype=int)] = emb
    return table


def stage_rec(cfg: Config, run: RunDir, ctx, knowledge: dict) -> dict:
    """Eq. 12 for every backbone × variant × seed on the same test samples."""
    st = run.stage("rec")
    if st.done:
        return json.loads((st.path / "results.json").read_text())
    variants = {"base": None, **knowledge}
    results = train_knowledge_backbones(ctx.splits, ctx.tables, variants, cfg.rec)
    io.write_json(st.path / "results.json", results)
    st.complete(["results.json"])
    return results


def run(cfg: Config, run_dir: RunDir) -> dict:
    ctx = prepare_splits(cfg.data, run_dir, subset=cfg.subset)
    branches = stage_construct(cfg, run_dir, ctx)
    adapters = stage_train(cfg, run_dir)
    infer_stats = stage_infer(cfg, run_dir, ctx, adapters)
    knowledge = stage_encode(cfg, run_dir, ctx)
    results = stage_rec(cfg, run_dir, ctx, knowledge)
    both = pd.concat([ctx.splits.train, ctx.splits.test])
    data = {"train": len(ctx.splits.train), "test": len(ctx.splits.test), "users": int(both["user_id"].nunique()),
            "items": int(both["item_id"].nunique())}
    seconds = {name: run_dir.stage(name).info().get("seconds") for name in ("construct", "infer", "encode", "rec")}
    summary = {"data": data, "stage_seconds": seconds, "branches": branches, "inference": infer_stats,
               "rec": results}
    io.write_json(run_dir.root / "results.json", summary)
    io.write_text(run_dir.root / "results.md", results_table(summary))
    return summary


def results_table(summary: dict) -> str:
    """AUC and LogLoss per backbone × variant (mean ± sd over seeds, and the AUC difference to the backbone alone),
    then the data sizes, Algorithm 1's branch counts and the inference statistics."""
    lines = ["| backbone | variant | AUC | ± sd | Δ AUC vs base | LogLoss |", "|---|---|---|---|---|---|"]
    for backbone, by_variant in summary["rec"].items():
        base = by_variant.get("base", {}).get("auc")
        for variant in VARIANTS:
            if variant in by_variant:
                r = by_variant[variant]
                sd = float(np.std([x["auc"] for x in r.get("runs", [])] or [0.0]))
                delta = "" if base is None or variant == "base" else f"{r['auc'] - base:+.4f}"
                lines.append(f"| {backbone} | {variant} | {r['auc']:.4f} | {sd:.4f} | {delta} | {r['logloss']:.4f} |")
    for title, key in (("Samples", "data"), ("Stage seconds", "stage_seconds"), ("Algorithm 1 branches", "branches"),
                       ("Inference", "inference")):
        lines += ["", f"{title}:", "```", json.dumps(summary.get(key, {}), indent=2), "```"]
    return "\n".join(lines) + "\n"
