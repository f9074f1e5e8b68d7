"""R4ec (RecSys '25): reasoning, reflection and refinement of user-preference and item-fact knowledge, fed
into CTR backbones. A composition of the substrate; the paper's steps map to code as follows:

==========================  ===================================================================================
Algorithm 1, §3.3           :func:`stage_construct` → :func:`~reasonrec.methods.r4ec_steps.construct`
eq. 7-10 (actor, reflector)  :func:`stage_train` → LoRA SFT runs (:func:`reasonrec.train.sft.train_sft`)
§3.5 inference              :func:`stage_infer` → ``iterative_refinement`` and ``reflection_filter``
eq. 11-12                   :func:`stage_encode` (knowledge encoder) and :func:`stage_rec` (connectors + backbones)
==========================  ===================================================================================

Every stage writes into the run directory and is skipped when complete; LLM calls go through the persistent
generation cache, so an interrupted stage resumes without asking the model twice.

Variants written to ``results.json`` (R4ec Tab. 2; same test samples, same seeds, same knowledge windows):

============  ===================================================================  ==========================
variant       knowledge                                                            connector (eq. 12)
============  ===================================================================  ==========================
base          none: the backbone alone                                             —
kar           the un-tuned base model's single answer to the reasoning prompts     ``hybrid`` (KAR §3.3: 2
              (no adapter, no reflection): KAR's System-1 knowledge                shared + 5 specific
                                                                                   experts, KAR ``run_ctr.py``)
r2ec          the first answer of an actor trained on D_reason only (§4.1.4)       ``mlp``
r4ec_refine   actor (D_reason + D_refine) + reflector, iterative refinement        ``mlp``
r4ec_filter   k actor samples, the reflector's reasonable ones averaged (§3.5)     ``mlp``
============  ===================================================================  ==========================

``rec.connectors`` changes a row's connector.

Fidelity notes (issue 17, "deviations that change results"), with what the reference code does:

1. Leakage. The LLM reads only interactions strictly before the earliest CTR sample its knowledge serves
   (``subset.knowledge_window: pre_sample``, :class:`~reasonrec.methods.common.KnowledgeContext`); construction
   cases come from the same windows, so no CTR label (train or test) reaches any prompt. KAR's code does the
   same: ``preprocess/generate_data_and_prompt.py`` builds the LM history from ``item_seq[:lm_hist_idx]`` and the
   CTR samples from ``range(lm_hist_idx, len(item_seq))``; its item prompts show title and brand only. R4ec's
   code (ucas-hao/R4ec) does not publish the knowledge-prompt inputs: its ``generate_data_and_prompt.py`` has the
   KAR prompt builder commented out and reads ``lm_hist_idx`` from a split file that its ``preprocess_amz.py``
   no longer writes, so which history its knowledge saw cannot be checked. ``knowledge_window: train`` keeps the
   former behaviour (last train interactions, which include the user's train targets) for comparison only.
2. The five rows above; the KAR row uses KAR's hybrid-expert adaptor as KAR does.
3. Item prompts show ``subset.pos_neg_users`` (default 1, as R4ec's ``prompt/prompt.py``: "one user who likes
   the target movie and one user who does not") users with [TITLE, RATING] histories of
   ``subset.neighbour_history_len`` (default ``history_len``) interactions.
4. Encoder: the encoder's own maximum input length and L2-normalised vectors
   (:mod:`reasonrec.knowledge.encoders`); R4ec's ``rec/knowledge_bge.py`` encodes with BGE-M3 at
   ``max_length=2048`` (its dense vectors are normalised).
5. Filter: only parsed samples are averaged; an entity none of whose samples parsed takes its refined answer,
   and the count is reported (``encode`` stage info and ``results.json``).
6. An unparsed judgement is retried like any malformed answer (``generate_parsed``), then counted apart
   (``judge_unparsed_*``), never as "reasonable".
7. Protocol: R4ec's code (``preprocess/preprocess_amz.py``) keeps Amazon-Books users with ≥ 60 and items with
   ≥ 40 interactions (``user_core = 60``, ``item_core = 40``, as KAR's ``preprocess_amz.py``; KAR and R4ec
   apply no filter to ML-1M), splits each user's sequence at ``int(0.8 * len)`` and starts train CTR samples at
   index 11 (``range(11, split + 1)``). Our ``kar`` protocol starts at ``min_history`` = 10 (the first 10
   interactions are the pre-sample window, and the sample at index 10 is simply one more train sample) and puts
   index ``split`` in test (R4ec's ``range(11, split + 1)`` puts it in train too, while its ``test.json`` starts
   at ``split``: an off-by-one we do not copy). The k-core filter is the ``kar`` protocol's ``user_core`` /
   ``item_core`` options (defaults 60 / 40 on Amazon, 0 elsewhere, :mod:`reasonrec.data.protocols`).

``results.json`` follows :mod:`reasonrec.eval.results` (intervals by user bootstrap, paired Δ vs
``results.reference``), computed from the per-sample predictions in ``rec/predictions.parquet``; ``results.md``
is rendered from it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field, field_validator, model_validator

from .. import io
from ..config import DataSection, Section
from ..eval import results as R
from ..llm.base import LLMSection
from ..llm.engine import EngineSection
from ..progress import step as progress_step
from ..runs import RunDir, config_fields
from . import r4ec_steps as steps
from .common import prepare_splits, train_knowledge_backbones

VARIANTS = ("base", "kar", "r2ec", "r4ec_refine", "r4ec_filter")
# what each row of the results is, one line each (the run's summary table and the report say it beside the value)
VARIANT_INFO = {
    "base": "the CTR backbone alone, no LLM knowledge",
    "kar": "KAR: one answer of the un-tuned base model per user / item (System 1)",
    "r2ec": "R²ec: one answer of the actor trained on D_reason only",
    "r4ec_refine": "R4ec iterative refinement: actor → reflection → refine while judged unreasonable",
    "r4ec_filter": "R4ec reflection as a filter: mean of the actor's samples the reflector judged reasonable",
}
# the run's stages in order, so that progress says "stage 4/6 infer"
STAGES = ("data", "construct", "train", "infer", "encode", "rec")
# seconds of each stage in the CPU study (benchmarks/results/r4ec-ml100k-cpu.md; data: a few seconds): the
# weights of the whole-run ETA (RunDir.eta), which holds while the stages keep these proportions
STAGE_SECONDS = {"data": 5, "construct": 90, "train": 660, "infer": 1016, "encode": 4, "rec": 10}
KNOWLEDGE_VARIANTS = VARIANTS[1:]
# adapter role → construction sets it is trained on (Algorithm 1; eq. 7-9 actor, eq. 10 reflector; R4ec §4.1.4
# R²ec: "only the obtained D_reason for training a single actor")
SFT_SETS = {"actor": ("reason", "refine"), "reflect": ("reflect",), "r2ec": ("reason",)}


class SubsetSection(Section):
    """Which part of the data the LLM stages cover (the CPU config cannot reason about every user).

    Fields:
        users: users sampled (seeded) from the split; ``None`` = all. Their samples form the CTR data.
        items: keep only samples whose target item is among the ``items`` most frequent train targets of those
            users; ``None`` = all items.
        construct_fraction: share of users and of items that get one supervision case each for Algorithm 1;
            R4ec §4.1.5 uses 40%.
        pos_neg_users: users who liked / disliked an item shown in the item prompts (each); default 1 (R4ec
            ``prompt/prompt.py``: one user who likes the item and one who does not).
        history_len: interactions shown per history in prompts; default 10 (the ``kar`` protocol's pre-sample
            window is the first 10 interactions).
        neighbour_history_len: interactions shown per liker / disliker in item prompts; ``None`` = history_len.
        knowledge_window: ``pre_sample`` (default: only interactions before the earliest CTR sample the knowledge
            serves, as KAR's code) or ``train`` (the former, leaking behaviour; see the module docstring).
    """

    users: int | None = Field(None, ge=1)
    items: int | None = Field(None, ge=1)
    construct_fraction: float = Field(0.4, gt=0, le=1)
    pos_neg_users: int = Field(1, ge=1)
    history_len: int = Field(10, ge=1)
    neighbour_history_len: int | None = Field(None, ge=1)
    knowledge_window: Literal["pre_sample", "train"] = "pre_sample"


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
        base_model: the model the adapters (actor, reflector, R²ec actor per side) are trained on, and the
            un-tuned model of the kar row.
        epochs, learning_rate, batch_size, max_length: the SFT settings.
        infer_backend: the backend that runs the trained adapters at inference (§3.5): ``transformers``
            (CPU/GPU), ``llamacpp`` (CPU: the adapters converted to GGUF once, cached by checksum; the bundled
            base model only), ``vllm`` (GPU throughput, adapters served as LoRA requests) or ``auto`` (default):
            llama.cpp where it is the faster path (CPU, llama-cpp-python installed, bundled base model), else
            transformers (:func:`reasonrec.llm.lora_gguf.adapter_backend`; the choice is in the stage's info).
        infer_options: options of that backend (e.g. ``dtype``, ``batch_size``, ``gpu_memory_utilization``).
    """

    base_model: str = "smollm2-135m"
    infer_backend: Literal["auto", "transformers", "llamacpp", "vllm"] = "auto"
    infer_options: dict[str, Any] = {}
    epochs: float = Field(3.0, gt=0)
    learning_rate: float = Field(1e-4, gt=0)
    batch_size: int = Field(4, ge=1)
    max_length: int = Field(1024, ge=64)

    @field_validator("infer_options")
    @classmethod
    def _adapters_are_trained(cls, options: dict[str, Any]) -> dict[str, Any]:
        if "adapters" in options:
            raise ValueError("'adapters' is set by the run (the adapters the train stage writes); remove it "
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
        connectors: connector of each knowledge variant; default ``hybrid`` for ``kar`` (KAR's hybrid-expert
            adaptor) and ``mlp`` (R4ec eq. 12) for the others.
        hybrid_shared, hybrid_experts: shared / specific experts of the ``hybrid`` connector; default 2 / 5
            (KAR ``RS/run_ctr.py``: ``export_num = 2``, ``specific_export_num = 5``).
    """

    backbones: list[str] = Field(default_factory=lambda: ["din", "dcn", "autoint", "gru4rec_ctr"], min_length=1)
    encoder: str = "minilm"
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(256, ge=1)
    valid_fraction: float = Field(0.1, ge=0, lt=1)
    history_len: int = Field(10, ge=1)
    connectors: dict[str, Literal["mlp", "moe", "hybrid"]] = Field(
        default_factory=lambda: {"kar": "hybrid", "r2ec": "mlp", "r4ec_refine": "mlp", "r4ec_filter": "mlp"})
    hybrid_shared: int = Field(2, ge=1)
    hybrid_experts: int = Field(5, ge=1)

    @field_validator("connectors")
    @classmethod
    def _known_variants(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(value) - set(KNOWLEDGE_VARIANTS))
        if unknown:
            raise ValueError(f"unknown variant(s) {unknown}; the knowledge variants are {list(KNOWLEDGE_VARIANTS)}")
        return {v: value.get(v, "mlp") for v in KNOWLEDGE_VARIANTS}

    def model_options(self) -> dict[str, dict]:
        """CTRModelConfig fields per variant (the connector, and KAR's expert counts for ``hybrid``)."""
        out = {}
        for variant, conn in self.connectors.items():
            opts: dict[str, Any] = {"connector": conn}
            if conn == "hybrid":
                opts.update(n_shared=self.hybrid_shared, n_experts=self.hybrid_experts)
            out[variant] = opts
        return out


class Config(Section):
    """An R4ec experiment (``method: r4ec``). See ``configs/r4ec/``."""

    method: Literal["r4ec"] = "r4ec"
    run_dir: Path
    engine: EngineSection = Field(default_factory=EngineSection)  # where LLM calls run (llm/engine.py)
    data: DataSection = Field(default_factory=lambda: DataSection(protocol="kar"))
    subset: SubsetSection = Field(default_factory=SubsetSection)
    teacher: LLMSection = Field(default_factory=LLMSection)
    generation: GenerationSection = Field(default_factory=GenerationSection)
    train: ActorTrainSection = Field(default_factory=ActorTrainSection)
    rec: RecSection = Field(default_factory=RecSection)
    results: R.ResultsSection = Field(default_factory=R.ResultsSection)

    @model_validator(mode="after")
    def _reference_is_a_variant(self):
        # checked at load: a wrong name would otherwise surface only after the whole run
        if self.results.reference not in VARIANTS:
            raise ValueError(f"results.reference must be one of {list(VARIANTS)}; got '{self.results.reference}'")
        return self


def check(cfg: Config, checker) -> None:
    """Every name the config gives, resolved before any stage runs (:mod:`reasonrec.checks`)."""
    checker.data("data", cfg.data)
    checker.llm("teacher.name", cfg.teacher.name, cfg.teacher.backend, cfg.teacher.options)
    # the base model is trained on transformers, then served by train.infer_backend
    from ..llm.lora_gguf import adapter_backend

    infer_backend = adapter_backend(cfg.train.infer_backend, cfg.train.base_model)[0]
    before = len(checker.problems)
    if infer_backend == "llamacpp":  # trained on transformers, served on llama.cpp: both must resolve
        checker.llm("train.base_model", cfg.train.base_model, "transformers", {}, trainable=True)
    if len(checker.problems) == before:  # a bad name is reported once
        checker.llm("train.base_model", cfg.train.base_model, infer_backend, cfg.train.infer_options,
                    trainable=infer_backend != "llamacpp", backend_key="train.infer_backend",
                    options_key="train.infer_options")
    checker.encoder("rec.encoder", cfg.rec.encoder)
    checker.backbones("rec.backbones", cfg.rec.backbones)


# ---------------------------------------------------------------------------------------------- stages

def stage_construct(cfg: Config, run: RunDir, ctx) -> dict:
    """Algorithm 1 for users and its §3.3 twin for items, with the teacher."""
    st = run.stage("construct", after=["data"], depends=config_fields(
        cfg, "teacher", "generation", "subset", "data.seed"))
    if st.done:
        return st.info()["branches"]
    from ..llm.base import load_llm

    teacher = load_llm(cfg.teacher.name, backend=cfg.teacher.backend,
                       cache=cfg.teacher.cache or run.root / "llm_cache.sqlite", **cfg.teacher.options)
    gen = steps.GenArgs(cfg.generation.max_new_tokens, 0.0, cfg.generation.max_attempts, cfg.data.seed,
                         cfg.generation.prime, constrain=_constrain(cfg.generation, teacher), domain=ctx.domain)
    _warn_unconstrained(run, cfg.generation, gen, f"teacher {cfg.teacher.name}")
    branches, files = {}, []
    for side in ("user", "item"):
        cases = ctx.cases(side, cfg.subset.construct_fraction)
        with run.step(f"{side} Algorithm 1"):
            built = steps.construct(teacher, side, ctx.domain, cases, gen)
        _warn_construct(run, side, len(cases), built)
        for name in ("reason", "reflect", "refine"):
            io.write_parquet(st.path / f"{side}_{name}.parquet", pd.DataFrame(
                getattr(built, name), columns=["key", "system", "prompt", "completion"]))
            files.append(f"{side}_{name}.parquet")
        branches[side] = {**dict(built.branches), **built.parse.as_dict(), "constrained": int(gen.constrain)}
    st.complete(files, branches=branches)
    return branches


def _warn_unconstrained(run: RunDir, g: GenerationSection, gen: steps.GenArgs, who: str) -> None:
    if g.constrain is None and not gen.constrain:
        run.warn(f"constraints unenforced: {who} does not enforce regex constraints, so answers are parsed "
                 f"({g.max_attempts} attempt(s) each) and malformed ones counted, not prevented")


def _warn_construct(run: RunDir, side: str, n_cases: int, built: steps.Constructed) -> None:
    """Algorithm 1's degenerate outcomes, said when they happen: nothing kept, or a set left empty."""
    sizes = {name: len(getattr(built, name)) for name in ("reason", "reflect", "refine")}
    how = ", ".join(f"{k} {v}" for k, v in sorted(built.branches.items()) if v)
    if not any(sizes.values()):
        run.warn(f"Algorithm 1 kept nothing on the {side} side: 0 of {n_cases} cases ({how or 'no cases'}); "
                 f"the {side} adapters are not trained and fall back to the base model")
    elif empty := [k for k, v in sizes.items() if not v]:
        run.warn(f"Algorithm 1 kept no {' / '.join(empty)} pairs on the {side} side ({how})")


def sft_data(construct_dir: Path, side: str, role: str) -> pd.DataFrame:
    """The rows adapter ``{side}_{role}`` is trained on: the construction sets of :data:`SFT_SETS`."""
    return pd.concat([pd.read_parquet(construct_dir / f"{side}_{n}.parquet") for n in SFT_SETS[role]],
                     ignore_index=True)


def stage_train(cfg: Config, run: RunDir) -> dict[str, Path | None]:
    """Eq. 7-9: the actor on reasoning + refinement data; eq. 10: the reflection model on reflection data;
    R²ec's actor on reasoning data only. ``train/sets.json`` records the rows (keys) each adapter saw."""
    from ..train.config import SFTConfig
    from ..train.sft import train_sft

    st = run.stage("train", after=["construct"], depends=config_fields(
        cfg, "train.base_model", "train.epochs", "train.learning_rate", "train.batch_size", "train.max_length",
        "data.seed"))
    if st.done:
        return {k: None if v is None else st.path / v for k, v in st.info()["adapters"].items()}
    src, adapters, sets = run.stage("construct").path, {}, {}
    for side in ("user", "item"):
        for role in SFT_SETS:
            name = f"{side}_{role}"
            df = sft_data(src, side, role)
            sets[name] = {"sets": list(SFT_SETS[role]), "keys": df["key"].tolist()}
            if df.empty:  # the teacher kept nothing: the role falls back to the base model (recorded)
                adapters[name] = None
                run.warn(f"adapter {name} not trained: no {' + '.join(SFT_SETS[role])} rows from Algorithm 1; "
                         f"its role runs on the base model {cfg.train.base_model}")
                continue
            if role == "r2ec" and len(sft_data(src, side, "actor")) == len(df):
                # no refinement rows: the actor's data is D_reason alone, so its adapter is R²ec's too
                adapters[name] = adapters[f"{side}_actor"]
                sets[name]["same_as"] = f"{side}_actor"
                continue
            out = run.root / "train" / name
            sft = SFTConfig.model_validate({
                "model": {"name": cfg.train.base_model, "lora": {"targets": "all-linear"}},
                "data": {"train": src / f"{side}_{SFT_SETS[role][0]}.parquet"},
                "system_column": "system",
                "training": {"output_dir": out, "seed": cfg.data.seed, "learning_rate": cfg.train.learning_rate,
                             "num_train_epochs": cfg.train.epochs, "lr_scheduler_type": "cosine",
                             "warmup_ratio": 0.1, "per_device_train_batch_size": cfg.train.batch_size,
                             "max_length": cfg.train.max_length, "logging_steps": 1},
            })
            run.log(f"train {name}: LoRA SFT on {len(df)} samples ({' + '.join(SFT_SETS[role])})")
            adapters[name] = train_sft(sft, df).adapter_dir
    sets = {name: {**s, "adapter": None if adapters[name] is None else str(adapters[name])}
            for name, s in sets.items()}
    io.write_json(run.root / "train" / "sets.json", sets)
    rel = {k: None if v is None else Path(v).resolve().relative_to(st.path.resolve()).as_posix()
           for k, v in adapters.items()}
    st.complete([v for v in rel.values() if v is not None] + ["sets.json"], adapters=rel)
    return adapters


def infer_side(llm, side: str, domain: str, entities: list, adapters: dict[str, Path | None],
               g: GenerationSection, gen: steps.GenArgs) -> tuple[dict[str, Any], dict[str, Any]]:
    """§3.5 and the ablations for one side: the texts of every knowledge variant, and their statistics."""
    def name(role: str) -> str | None:
        return f"{side}_{role}" if adapters.get(f"{side}_{role}") else None

    actor, reflector = name("actor"), name("reflect")
    with progress_step(f"{side} kar"):
        kar, kar_stats = steps.single_answer(llm, side, domain, entities, adapter=None, gen=gen)
    with progress_step(f"{side} r2ec"):
        r2ec, r2ec_stats = steps.single_answer(llm, side, domain, entities, adapter=name("r2ec"), gen=gen)
    with progress_step(f"{side} refinement"):
        ref = steps.iterative_refinement(llm, side, domain, entities, actor=actor, reflector=reflector,
                                         max_steps=g.max_refine_steps, gen=gen)
    with progress_step(f"{side} filter"):
        filt = steps.reflection_filter(llm, side, domain, entities, actor=actor, reflector=reflector,
                                       k=g.filter_k, temperature=g.filter_temperature, gen=gen)
    texts = {"kar": kar, "r2ec": r2ec, "r4ec_first": ref.first, "r4ec_refine": ref.final,
             "filter_samples": filt.samples, "filter_keep": filt.keep}
    n = max(len(entities), 1)
    stats = {
        "entities": len(entities), "refined": ref.refined, "constrained": int(gen.constrain),
        "adapters": {"kar": None, "r2ec": name("r2ec"), "actor": actor, "reflector": reflector},
        # shares of all entities; judged unparsed (after retries) are reported apart, never as reasonable
        "unreasonable_before": ref.judged_unreasonable_first / n,
        "unreasonable_after": ref.judged_unreasonable_final / n,
        "judge_unparsed_before": ref.judge_unparsed_first, "judge_unparsed_after": ref.judge_unparsed_final,
        "filter_kept_fraction": filt.kept_fraction, "filter_judge_unparsed": filt.judge_unparsed,
        **{f"kar_{k}": v for k, v in kar_stats.as_dict().items()},
        **{f"r2ec_{k}": v for k, v in r2ec_stats.as_dict().items()},
        **{f"refine_{k}": v for k, v in ref.parse.as_dict().items()},
        **{f"filter_{k}": v for k, v in filt.parse.as_dict().items()},
    }
    return texts, stats


def stage_infer(cfg: Config, run: RunDir, ctx, adapters: dict[str, Path | None]) -> dict:
    """§3.5 for every user and item of the subset: iterative refinement and reflection as a filter with the
    trained adapters, plus the single answers of the KAR (un-tuned model) and R²ec (D_reason actor) rows."""
    st = run.stage("infer", after=["data", "train"], depends=config_fields(
        cfg, "train.base_model", "train.infer_backend", "train.infer_options", "generation", "subset", "data.seed"))
    if st.done:
        return st.info()["stats"]
    from ..llm.base import load_llm
    from ..llm.lora_gguf import adapter_backend

    trained = {name: str(path) for name, path in adapters.items() if path is not None}
    trained = dict(sorted(trained.items()))
    cache = run.root / "llm_cache.sqlite"
    backend, why = adapter_backend(cfg.train.infer_backend, cfg.train.base_model)
    run.log(f"infer: adapters served on {backend} ({why})")
    if backend in ("vllm", "llamacpp"):  # both load the adapters with the model (llama.cpp: converted to GGUF)
        llm = load_llm(cfg.train.base_model, backend=backend, cache=cache, **{"adapters": trained,
                                                                              **cfg.train.infer_options})
    else:
        llm = load_llm(cfg.train.base_model, backend="transformers", cache=cache, **cfg.train.infer_options)
        for name, path in trained.items():
            llm.load_adapter(name, path)
    g = cfg.generation
    gen = steps.GenArgs(g.max_new_tokens, 0.0, g.max_attempts, cfg.data.seed, g.prime, constrain=_constrain(g, llm),
                        domain=ctx.domain)
    _warn_unconstrained(run, g, gen, f"{backend} {cfg.train.base_model}")
    stats, files = {}, []
    for side in ("user", "item"):
        ids, entities = ctx.entities(side)
        texts, stats[side] = infer_side(llm, side, ctx.domain, entities, adapters, g, gen)
        _warn_infer(run, side, texts, stats[side])
        io.write_parquet(st.path / f"{side}.parquet", pd.DataFrame({"entity_id": ids, **texts}))
        files.append(f"{side}.parquet")
    st.complete(files, stats=stats, backend=backend)
    return stats


def _warn_infer(run: RunDir, side: str, texts: dict[str, Any], stats: dict[str, Any]) -> None:
    """Inference outcomes that make a variant mean something else than its name: no text refined, or a
    variant whose every answer is empty (malformed after retries), so its knowledge encodes the empty string."""
    n = stats["entities"]
    if n and texts["r4ec_refine"] == texts["r4ec_first"]:
        run.warn(f"refinement changed no {side} text: r4ec_refine is the actor's first answer for all {n} "
                 f"{side}s ({stats['refined']} refined; judged unreasonable: {stats['unreasonable_before']:.0%})")
    for variant in ("kar", "r2ec", "r4ec_refine"):
        if n and not any(texts[variant]):
            run.warn(f"every {side} answer of {variant} is empty (malformed after retries): its {side} "
                     f"knowledge is the encoding of the empty text")
    if n and not any(t for row in texts["filter_samples"] for t in row):
        run.warn(f"every r4ec_filter {side} sample is empty: the filter falls back to the refined answer")


def filter_pool(emb: np.ndarray, keep: np.ndarray, parsed: np.ndarray, fallback: np.ndarray
                ) -> tuple[np.ndarray, dict[str, int]]:
    """§3.5 "Reflection as a Filter" pooling over (N, k, d) sample vectors: the mean of the kept parsed samples;
    none kept → the mean of the parsed ones (the paper: "average all the available knowledge"); none parsed →
    ``fallback`` (N, d), the entity's refined answer. Empty (unparsed) samples are never averaged."""
    use = keep & parsed
    none_kept = ~use.any(axis=1)
    use[none_kept] = parsed[none_kept]
    none_parsed = ~use.any(axis=1)
    pooled = (emb * use[..., None]).sum(1) / np.maximum(use.sum(1, keepdims=True), 1)
    pooled[none_parsed] = fallback[none_parsed]
    return pooled.astype(np.float32), {"none_kept": int(none_kept.sum() - none_parsed.sum()),
                                       "none_parsed_fallback_refined": int(none_parsed.sum())}


def stage_encode(cfg: Config, run: RunDir, ctx) -> dict[str, dict[str, np.ndarray]]:
    """Eq. 11: encode every variant's texts; the filter variant pools its samples (:func:`filter_pool`).
    Returns ``{variant: {"user": table, "item": table}}`` indexed by id (row 0 = padding)."""
    from ..knowledge import load_encoder

    st = run.stage("encode", after=["infer"], depends=config_fields(cfg, "rec.encoder"))
    if not st.done:
        encoder = load_encoder(cfg.rec.encoder)
        counts = {}
        for side in ("user", "item"):
            df = pd.read_parquet(run.stage("infer").path / f"{side}.parquet")
            size = ctx.n_entities(side) + 1
            vecs = {}
            for variant in ("kar", "r2ec", "r4ec_refine"):
                vecs[variant] = _table(size, df["entity_id"], encoder.encode(df[variant].tolist()))
            samples = [list(row) for row in df["filter_samples"]]
            k = max((len(s) for s in samples), default=0)
            flat = [t for row in samples for t in row]
            emb = encoder.encode(flat).reshape(len(df), k, encoder.dim)
            parsed = np.array([[bool(t) for t in row] for row in samples], dtype=bool).reshape(len(df), k)
            keep = np.array([list(x) for x in df["filter_keep"]], dtype=bool).reshape(len(df), k)
            refined = vecs["r4ec_refine"][np.asarray(df["entity_id"], dtype=int)]
            pooled, counts[side] = filter_pool(emb, keep, parsed, refined)
            counts[side].update({f"empty_{v}": int((df[v] == "").sum()) for v in ("kar", "r2ec", "r4ec_refine")})
            vecs["r4ec_filter"] = _table(size, df["entity_id"], pooled)
            with io.atomic_path(st.path / f"{side}.npz") as tmp:
                with open(tmp, "wb") as f:
                    np.savez(f, **vecs)
        st.complete(["user.npz", "item.npz"], counts=counts)
    loaded = {side: np.load(st.path / f"{side}.npz") for side in ("user", "item")}
    return {v: {side: loaded[side][v] for side in ("user", "item")} for v in KNOWLEDGE_VARIANTS}


def _table(size: int, ids, emb: np.ndarray) -> np.ndarray:
    table = np.zeros((size, emb.shape[1]), dtype=np.float32)
    table[np.asarray(ids, dtype=int)] = emb
    return table


def stage_rec(cfg: Config, run: RunDir, ctx, knowledge: dict) -> dict:
    """Eq. 12 for every backbone × variant × seed on the same test samples."""
    st = run.stage("rec", after=["data", "encode"], depends=config_fields(cfg, "rec"))
    if st.done:
        return json.loads((st.path / "metrics.json").read_text())
    variants = {"base": None, **knowledge}
    preds: list[pd.DataFrame] = []
    results = train_knowledge_backbones(ctx.splits, ctx.tables, variants, cfg.rec,
                                        model_options=cfg.rec.model_options(), predictions=preds,
                                        save_dir=st.path / "ctr")  # what `reasonrec serve` scores with
    io.write_json(st.path / "metrics.json", results)
    # kept (with each sample's subgroups) so every interval can be recomputed without retraining
    io.write_parquet(st.path / "predictions.parquet", R.attach_subgroups(
        pd.concat(preds, ignore_index=True), ctx.splits.test, ctx.splits.train, cfg.results.activity_edges))
    st.complete(["metrics.json", "predictions.parquet", "ctr"])
    return results


def write_results(cfg: Config, run: RunDir, ctx, details: dict) -> R.Results:
    """``results.json`` / ``results.parquet`` / ``timings.json`` / ``results.md`` from the rec stage's
    predictions (:mod:`reasonrec.eval.results`)."""
    from ..runs import package_versions

    splits = ctx.splits
    preds = pd.read_parquet(run.stage("rec").path / "predictions.parquet")
    res = R.build_results(
        preds, cfg.results, method="r4ec", dataset=splits.dataset, protocol=splits.protocol,
        split_checksum=R.splits_checksum(splits),
        config=cfg.model_dump(mode="json"), packages=package_versions(), predictions="rec/predictions.parquet",
        details=details)
    R.write_results(run.root, res, R.Timings.of_run(run.root))
    io.write_text(run.root / "results.md", results_table(res))
    from ..eval.report import result_warnings

    run.clear_warnings("results")  # said again for these results
    for message in result_warnings(res):
        run.warn(message, stage="results")
    return res


def variant_lines(infer_stats: dict[str, Any]) -> dict[str, str]:
    """:data:`VARIANT_INFO`, with the adapters that fell back to the base model said on their variant's line."""
    roles = {"r2ec": ("r2ec",), "r4ec_refine": ("actor", "reflector"), "r4ec_filter": ("actor", "reflector")}
    out = dict(VARIANT_INFO)
    for variant, need in roles.items():
        missing = [f"{side} {role}" for side, st in infer_stats.items() for role in need
                   if not (st.get("adapters") or {}).get(role)]
        if missing:
            out[variant] += f" — untrained, base model for: {', '.join(missing)}"
    return out


def evaluated_splits(cfg: Config, run_dir: RunDir):
    """(splits, tables) the run's ``split_checksum`` is of: ``reasonrec bench`` trains the classic baselines on
    them (read back from the complete ``data`` stage)."""
    ctx = prepare_splits(cfg.data, run_dir, subset=cfg.subset)
    return ctx.splits, ctx.tables


def run(cfg: Config, run_dir: RunDir) -> dict:
    run_dir.stages, run_dir.stage_weights = list(STAGES), dict(STAGE_SECONDS)
    ctx = prepare_splits(cfg.data, run_dir, subset=cfg.subset)
    branches = stage_construct(cfg, run_dir, ctx)
    adapters = stage_train(cfg, run_dir)
    infer_stats = stage_infer(cfg, run_dir, ctx, adapters)
    knowledge = stage_encode(cfg, run_dir, ctx)
    results = stage_rec(cfg, run_dir, ctx, knowledge)
    both = pd.concat([ctx.splits.train, ctx.splits.test])
    data = {"train": len(ctx.splits.train), "test": len(ctx.splits.test), "users": int(both["user_id"].nunique()),
            "items": int(both["item_id"].nunique())}
    details = {"data": data, "branches": branches, "inference": infer_stats,
               "encode": run_dir.stage("encode").info().get("counts", {}),
               "connectors": {"base": None, **cfg.rec.connectors},
               "variants": variant_lines(infer_stats),
               "knowledge_window": cfg.subset.knowledge_window,
               # the report's text tables (reasonrec.eval.report): each variant's knowledge per user / item
               "report_texts": [{"path": f"infer/{side}.parquet", "id_column": "entity_id",
                                 "user_column": "entity_id" if side == "user" else None,
                                 "columns": ["kar", "r2ec", "r4ec_refine"], "caption": f"{side} knowledge"}
                                for side in ("user", "item")]}
    res = write_results(cfg, run_dir, ctx, details)
    return {**details, "stage_seconds": _stage_seconds(run_dir), "rec": results, "results": res}


def _stage_seconds(run: RunDir) -> dict[str, float | None]:
    return {name: run.stage(name).info().get("seconds") for name in ("construct", "infer", "encode", "rec")}


def results_table(res: R.Results) -> str:
    """The schema's table (AUC with its interval, seed sd, paired Δ vs the reference, the other metrics; AUC by
    subgroup), then each variant's connector, the data sizes, Algorithm 1's branch counts, the inference
    statistics and the filter's pooling counts."""
    lines = [R.render_markdown(res, "auc").rstrip("\n")]
    conn = res.details.get("connectors", {})
    lines += ["", "Connectors (eq. 12): " + ", ".join(f"{v} {c or '—'}" for v, c in conn.items())]
    for title, key in (("Samples", "data"), ("Algorithm 1 branches", "branches"), ("Inference", "inference"),
                       ("Filter pooling and empty answers", "encode")):
        lines += ["", f"{title}:", "```", json.dumps(res.details.get(key, {}), indent=2), "```"]
    return "\n".join(lines) + "\n"
