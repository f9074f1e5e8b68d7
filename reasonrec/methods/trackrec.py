"""TrackRec (Xu et al. 2025): a CoT generator G aligned by a validator V's feedback, alternating rounds, distillation.
A composition of the substrate; the paper's steps map to code as follows:

===========================  ======================================================================================
§3.5 distillation            :func:`stage_distill`: teacher CoTs for a seeded share of train samples → LoRA SFT = G₀
Alg. 1, eq. 1-2              :func:`stage_feedback` → :func:`~.trackrec_steps.sample_feedback`, ``build_preferences``
eq. 3-4 (S-DPO)              :func:`train_generator`: softmax-DPO on G, reference = the previous round's G
§3.4, eq. 5-6 (Rec-tuning)   :func:`stage_cots` (G's greedy CoTs) → :func:`train_validator` (Yes/No loss on V)
Alg. 2 (alternation)         :func:`run_arm`: T rounds of G then V, each inheriting the previous round's weights
§3.6, eq. 7-8                :func:`stage_ctr`: CoT per sample → encoder → connector → CTR backbones (trained on
                             more samples than the LLM stages: :func:`stage_ctr_cots`); and
                             :func:`stage_eval`: V as a recommender (one forward pass per sample)
===========================  ======================================================================================

Arms (same test samples): ``trackrec`` and the ablations ``no_align`` / ``no_distill`` / ``no_rectune``
(Tables 6-7). Baselines: the backbones alone, TALLRec (V tuned on prompt^Rec without a summary), KAR-style
(round 0 of ``trackrec``: the un-aligned G₀ CoT in the backbones) and zero-shot V.

Stages are named by what they depend on (``cots/<G>``, ``eval/<G>-<V>``, ``ctr/<G>``), so identical work of two
arms is done once; every LLM row goes through the run's SQLite cache and every trainer resumes from its checkpoint.
"""

from __future__ import annotations

import dataclasses
import gc
import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field

from .. import io
from ..config import DataSection, Section
from ..errors import DataError
from ..eval import metrics
from ..eval import results as R
from ..llm.base import LLMSection
from ..llm.engine import EngineSection
from ..llm.prompts import sample_fields
from ..runs import RunDir, config_fields, package_versions
from . import trackrec_steps as steps
from .common import pointwise_samples_stage, train_knowledge_backbones, training_stage

# arm → (distillation, alignment, Rec-tuning)
ARMS = {"trackrec": (True, True, True), "no_align": (True, False, True), "no_distill": (False, True, True),
        "no_rectune": (True, True, False)}
Ablation = Literal["no_align", "no_distill", "no_rectune"]


class SubsetSection(Section):
    """The samples the LLM stages cover. Fields:
        users: users sampled (seeded); ``None`` = all. train_samples / test_samples: samples kept (seeded) from
            their train / test samples (``None`` = all); the CTR backbones test on the same ones and train on
            them plus ``rec.train_samples``' extra ones.
        min_history: samples with a shorter history are dropped (an empty history has no preference to summarise).
        history_len: history items shown in the prompts (CoLLM protocol: 10).
    """

    users: int | None = None
    train_samples: int | None = Field(None, ge=2)
    test_samples: int | None = Field(None, ge=2)
    min_history: int = Field(3, ge=0)
    history_len: int = Field(10, ge=1)


class TrainerSection(Section):
    """One LoRA training. Fields: epochs; learning_rate (TrackRec §4.1.4: AdamW 1e-5 for G and V, on Qwen2.5-7B);
    batch_size; save_steps (checkpoint every N steps, what a killed run resumes from)."""

    epochs: float = Field(1.0, gt=0)
    learning_rate: float = Field(1e-5, gt=0)
    batch_size: int = Field(4, ge=1)
    save_steps: int = Field(50, ge=1)


class ModelSection(Section):
    """G and V share one base model, as in the paper (Qwen2.5-7B for both). Fields:
        name: base model (``smollm2-135m``, ``tiny-random``, a folder or a cached Hugging Face id).
        backend: ``transformers`` (adapters per call) or ``vllm`` (re-started with every new adapter).
        options: backend options. max_length: prompt + completion tokens in training.
        lora_r, lora_alpha: the LoRA of every adapter (TALLRec / CoLLM: 8, 16).
    """

    name: str = "smollm2-135m"
    backend: Literal["transformers", "vllm"] = "transformers"
    options: dict[str, Any] = {}
    max_length: int = Field(1024, ge=64)
    lora_r: int = Field(8, ge=1)
    lora_alpha: int = Field(16, ge=1)


class DistillSection(TrainerSection):
    """§3.5. Fields: fraction (paper: "about 5%" of the training samples); max_new_tokens of a teacher CoT;
    temperature of the teacher (0 = greedy)."""

    fraction: float = Field(0.05, gt=0, le=1)
    max_new_tokens: int = Field(256, ge=8)
    temperature: float = Field(0.0, ge=0)
    epochs: float = Field(3.0, gt=0)


class AlignSection(TrainerSection):
    """Alg. 1 + eq. 4. Fields: n, temperature, top_p (§4.1.4: 10, 1.0, 0.9); max_new_tokens per CoT (also the
    greedy CoTs'); samples: train samples sampled for feedback each round (``None`` = all); beta: β of eq. 4
    (TrackRec official code 0.1); tie_tol: rewards closer than this are ties (:func:`~.trackrec_steps.build_preferences`);
    cot_temperature: decoding of the per-round CoTs, 0 = greedy (§3.3); > 0 only for random-weight smoke models."""

    n: int = Field(10, ge=2)
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(0.9, gt=0, le=1)
    max_new_tokens: int = Field(256, ge=8)
    samples: int | None = Field(None, ge=1)
    beta: float = Field(0.1, gt=0)
    tie_tol: float = Field(1e-6, ge=0)
    cot_temperature: float = Field(0.0, ge=0)
    batch_size: int = Field(2, ge=1)


class RecTuneSection(TrainerSection):
    """§3.4. Fields: from_base: re-train V from the base each round (the public code) instead of inheriting
    the previous round's V (Alg. 2)."""

    from_base: bool = False


class RecSection(Section):
    """Eq. 7-8: backbones, encoder (paper: BERT; default the bundled MiniLM), seeds, epochs, batch_size,
    valid_fraction (last share of each user's train samples for early stopping; of all of them when users have
    too few, :func:`~reasonrec.methods.common.holdout_last`), history_len. And:
        train_samples: train samples the backbones train on: the LLM stages' train samples plus seeded others of
            the full train split (of the subset's users when ``subset.users`` is set), each with G's greedy CoT
            (stage ``ctr_cots/<G>``); ``None`` = the LLM stages' only. The paper's backbones train on every train
            sample: a few dozen (what the LLM stages afford on a CPU) leave them at chance.
        arms: the arms whose rounds get backbone rows (``None`` = every arm); ``trackrec`` is always one, its
            round 0 being the KAR-style baseline.
    """

    backbones: list[str] = Field(default_factory=lambda: ["din"])
    train_samples: int | None = Field(None, ge=2)
    arms: list[Literal["trackrec", "no_align", "no_distill", "no_rectune"]] | None = None
    encoder: str = "minilm"
    seeds: list[int] = Field(default_factory=lambda: [0])
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(256, ge=1)
    valid_fraction: float = Field(0.1, ge=0, lt=1)
    history_len: int = Field(10, ge=1)


class Config(Section):
    """A TrackRec experiment (``method: trackrec``); see ``configs/trackrec/``. ``rounds``: T of Alg. 2
    (paper 3); ``ablations`` and ``ablation_rounds`` (rounds they run, default ``rounds``); ``baselines``;
    ``results``: the shared results schema, every arm / round / baseline compared (paired user bootstrap) with
    ``trackrec/r0`` (G₀ and the base V) by default."""

    method: Literal["trackrec"] = "trackrec"
    run_dir: Path
    engine: EngineSection = Field(default_factory=EngineSection)  # where LLM calls run (llm/engine.py)
    data: DataSection = Field(default_factory=lambda: DataSection(protocol="collm"))
    subset: SubsetSection = Field(default_factory=SubsetSection)
    model: ModelSection = Field(default_factory=ModelSection)
    teacher: LLMSection = Field(default_factory=LLMSection)
    distill: DistillSection = Field(default_factory=DistillSection)
    align: AlignSection = Field(default_factory=AlignSection)
    rectune: RecTuneSection = Field(default_factory=RecTuneSection)
    rounds: int = Field(3, ge=1)
    ablations: list[Ablation] = Field(default_factory=lambda: ["no_align", "no_distill", "no_rectune"])
    ablation_rounds: int | None = Field(None, ge=1)
    baselines: list[Literal["backbone", "tallrec", "zero_shot"]] = Field(
        default_factory=lambda: ["backbone", "tallrec", "zero_shot"])
    rec: RecSection = Field(default_factory=RecSection)
    results: R.ResultsSection = Field(default_factory=lambda: R.ResultsSection(reference="trackrec/r0"))


def check(cfg: Config, checker) -> None:
    """Every name the config gives, resolved before any stage runs (``reasonrec run --dry-run``)."""
    checker.data("data", cfg.data)
    checker.llm("teacher.name", cfg.teacher.name, cfg.teacher.backend, cfg.teacher.options)
    # G and V: one base, trained on transformers and served by model.backend
    checker.llm("model.name", cfg.model.name, cfg.model.backend, cfg.model.options, trainable=True)
    checker.encoder("rec.encoder", cfg.rec.encoder)
    checker.backbones("rec.backbones", cfg.rec.backbones)


# ---------------------------------------------------------------------------------------------- context

@dataclasses.dataclass
class Ctx:
    """The run's samples (with prompt fields), the shared LLM and the trained adapters by name."""

    cfg: Config
    run: RunDir
    splits: Any
    tables: Any
    domain: str
    fields: dict[str, list[dict]]
    full_train: pd.DataFrame  # the protocol's whole train split (the backbones' extra train samples come from it)
    like_threshold: float
    adapters: dict[str, Path] = dataclasses.field(default_factory=dict)
    _llm: Any = None
    _served: set[str] = dataclasses.field(default_factory=set)

    def llm(self):
        """The base model behind the cache, loaded once (again after a training released it)."""
        if self._llm is None:
            from ..llm.base import load_llm

            m = self.cfg.model
            opts = {**m.options, **({"adapters": dict(self.adapters)} if m.backend == "vllm" else {})}
            self._llm = load_llm(m.name, backend=m.backend, cache=self.run.root / "llm_cache.sqlite", **opts)
            self._served = set(self.adapters) if m.backend == "vllm" else set()
        return self._llm

    def adapter(self, name: str) -> str | None:
        """An adapter name for a call (``base`` = none), loaded into the LLM on first use."""
        if name == "base":
            return None
        self.llm()
        if name not in self._served:
            if self.cfg.model.backend == "vllm":  # vLLM registers LoRA adapters when the engine starts
                self.release()
                self.llm()
            else:
                self._llm.load_adapter(name, self.adapters[name])
                self._served.add(name)
        return name

    def release(self) -> None:
        """Free the inference model before a training run loads its own copy."""
        self._llm, self._served = None, set()
        gc.collect()


def stage_samples(cfg: Config, run: RunDir) -> Ctx:
    """CoLLM-protocol samples (→ seeded subset), each with a ``sample`` key; prompt fields per sample."""
    kctx, splits = pointwise_samples_stage(cfg, run, warm_only=True)
    fields = {n: _prompt_fields(df, kctx.tables, kctx.like_threshold, cfg.subset.history_len)
              for n, df in (("train", splits.train), ("test", splits.test))}
    return Ctx(cfg, run, splits, kctx.tables, kctx.domain, fields, kctx.splits.train, kctx.like_threshold)


def _prompt_fields(samples: pd.DataFrame, tables, like_threshold: float, history_len: int) -> list[dict]:
    """The prompt fields of each sample (history as [TITLE (YEAR), RATING], target item)."""
    items = {int(r["item_id"]): r for r in tables.items.to_dict("records")}
    return [sample_fields(r, items, None, like_threshold=like_threshold, max_history=history_len)
            for r in samples.to_dict("records")]


def _lora_training(ctx: Ctx, name: str, t: TrainerSection, init: str | None, data: Path) -> dict:
    """The trainer-config fields every TrackRec training shares (one LoRA, cosine schedule, 10% warm-up)."""
    m = ctx.cfg.model
    init_path = None if init in (None, "base") else ctx.adapters[init]
    return {"model": {"name": m.name, "init_adapter": init_path,
                      "lora": {"r": m.lora_r, "alpha": m.lora_alpha, "targets": "all-linear"}},
            "data": {"train": data},
            "training": {"output_dir": ctx.run.root / "train" / name, "seed": ctx.cfg.data.seed,
                         "learning_rate": t.learning_rate, "num_train_epochs": t.epochs,
                         "per_device_train_batch_size": t.batch_size, "max_length": m.max_length,
                         "lr_scheduler_type": "cosine", "warmup_ratio": 0.1, "logging_steps": 1,
                         "save_steps": t.save_steps}}


# ---------------------------------------------------------------------------------------------- fingerprints
# Every producing stage names the config fields it reads and the stages whose artifacts it reads (runs.py), so a
# changed key recomputes exactly the stages that read it and everything downstream. A trained adapter is a stage
# too (``train/<name>``, the trainer's output_dir): its ``adapter/`` folder's checksum is what the stages that call
# it see, so a re-trained G or V recomputes their CoTs, feedback and scores.

def _reads(cfg: Config) -> dict[str, Any]:
    """What every stage that builds prompts reads: the prompt fields' history length and the served base model
    (G and V are adapters on it; its backend and options decide how it decodes)."""
    return config_fields(cfg, "subset.history_len", "model.name", "model.backend", "model.options")


def _adapter_stages(*names: str | None) -> list[str]:
    """The ``train/<name>`` stages of the adapters a stage calls (``base`` / ``None``: the base model, no stage)."""
    return [f"train/{n}" for n in dict.fromkeys(names) if n not in (None, "base")]


def _train(ctx: Ctx, name: str, section: str, init: str | None, data_stage: str, data: Path, config_cls,
           train_fn, reads: tuple[str, ...] = (), **options: Any) -> str:
    """Stage ``train/<name>``: one LoRA training on ``data`` (of ``data_stage``), continuing from adapter ``init``.
    The stage folder is the trainer's output_dir, so a killed training resumes from its checkpoint and a changed
    fingerprint clears it (checkpoints included) before training again."""
    cfg = ctx.cfg
    st = training_stage(ctx.run, name, after=[data_stage, *_adapter_stages(init)], depends={
        **config_fields(cfg, "model.name", "model.max_length", "model.lora_r", "model.lora_alpha", "data.seed"),
        **config_fields(cfg, *(f"{section}.{k}" for k in TrainerSection.model_fields)),
        **config_fields(cfg, *(f"{section}.{k}" for k in reads)),
    })
    if not st.done:
        ctx.release()
        result = train_fn(config_cls.model_validate({**_lora_training(ctx, name, getattr(cfg, section), init, data),
                                                     **options}))
        st.complete(["adapter", "train_log.json"], skipped=result.skipped)
    ctx.adapters[name] = st.path / "adapter"
    return name


# ---------------------------------------------------------------------------------------------- stages

def stage_distill(ctx: Ctx) -> str:
    """§3.5: the teacher's CoTs for a seeded ``distill.fraction`` of train samples; G₀ = LoRA SFT on them."""
    from ..train.config import SFTConfig
    from ..train.sft import train_sft

    cfg = ctx.cfg
    st = ctx.run.stage("distill", after=["samples"], depends=config_fields(
        cfg, "teacher.name", "teacher.backend", "teacher.options", "distill.fraction", "distill.max_new_tokens",
        "distill.temperature", "subset.history_len", "data.seed"))
    if not st.done:
        from ..llm.base import load_llm

        train = ctx.splits.train
        n = max(1, int(round(cfg.distill.fraction * len(train))))
        idx = np.sort(np.random.default_rng(cfg.data.seed).choice(len(train), size=n, replace=False))
        fields = [ctx.fields["train"][i] for i in idx]
        teacher = load_llm(cfg.teacher.name, backend=cfg.teacher.backend,
                           cache=cfg.teacher.cache or ctx.run.root / "llm_cache.sqlite", **cfg.teacher.options)
        cots = steps.teacher_cots(teacher, ctx.domain, fields, max_new_tokens=cfg.distill.max_new_tokens,
                                  seed=cfg.data.seed, temperature=cfg.distill.temperature)
        io.write_parquet(st.path / "sft.parquet", pd.DataFrame({
            "sample": train["sample"].iloc[idx].tolist(),
            "prompt": [steps.cot_prompt(ctx.domain, f) for f in fields], "completion": cots}))
        st.complete(["sft.parquet"], samples=n)
    return _train(ctx, "G0", "distill", None, "distill", st.path / "sft.parquet", SFTConfig, train_sft)


def stage_feedback(ctx: Ctx, arm: str, r: int, g: str, v: str) -> dict:
    """Alg. 1 with G_{r-1} and V_{r-1} on a seeded share of train samples; eq. 2 → ``prefs.parquet``."""
    cfg = ctx.cfg
    st = ctx.run.stage(f"{arm}/r{r}/feedback", after=["samples", *_adapter_stages(g, v)], depends={
        **_reads(cfg), **config_fields(cfg, "align.n", "align.temperature", "align.top_p", "align.max_new_tokens",
                                       "align.samples", "align.tie_tol", "data.seed")})
    if st.done:
        return st.info()["stats"]
    a, n_train = cfg.align, len(ctx.splits.train)
    rng = np.random.default_rng(cfg.data.seed + r)   # a fresh draw of samples each round
    idx = np.sort(rng.choice(n_train, size=min(a.samples or n_train, n_train), replace=False))
    fields = [ctx.fields["train"][i] for i in idx]
    labels = ctx.splits.train["label"].to_numpy()[idx]
    sampling = steps.Sampling(a.n, a.temperature, a.top_p, a.max_new_tokens, seed=cfg.data.seed + 1000 * r)
    fb = steps.sample_feedback(ctx.llm(), ctx.domain, fields, labels, generator=ctx.adapter(g),
                               validator=ctx.adapter(v), sampling=sampling)
    prefs = steps.build_preferences(fb.rewards, fb.texts, a.tie_tol)
    io.write_parquet(st.path / "prefs.parquet", pd.DataFrame(
        [{"prompt": steps.cot_prompt(ctx.domain, fields[p["index"]]), "chosen": p["chosen"],
          "rejected": p["rejected"]} for p in prefs.rows], columns=["prompt", "chosen", "rejected"]))
    stats = {**prefs.stats(), "sampled_tokens": float(fb.tokens.mean())}
    st.complete(["prefs.parquet"], stats=stats)
    return stats


def train_generator(ctx: Ctx, arm: str, r: int, g: str) -> str:
    """Eq. 4: softmax-DPO on G_{r-1}'s preferences; G_{r-1} (frozen) is the reference, G_r continues from it."""
    from ..train.config import SDPOConfig
    from ..train.sdpo import train_sdpo

    prefs = ctx.run.stage(f"{arm}/r{r}/feedback").path / "prefs.parquet"
    if pd.read_parquet(prefs).empty:   # V preferred nothing: G carries over unchanged (logged)
        ctx.run.log(f"{arm} round {r}: no preference group kept; G stays {g}")
        return g
    return _train(ctx, f"{arm}-G{r}", "align", g, f"{arm}/r{r}/feedback", prefs, SDPOConfig, train_sdpo,
                  reads=("beta",), beta=ctx.cfg.align.beta)


def stage_cots(ctx: Ctx, g: str) -> pd.DataFrame:
    """§3.4: G's greedy CoT for every train and test sample (Rec-tuning data, V's and the backbones' input)."""
    st = ctx.run.stage(f"cots/{g}", after=["samples", *_adapter_stages(g)], depends=_cot_reads(ctx.cfg))
    if not st.done:
        parts = [_greedy_cot_frame(ctx, g, split, getattr(ctx.splits, split), ctx.fields[split])
                 for split in ("train", "test")]
        io.write_parquet(st.path / "cots.parquet", pd.concat(parts, ignore_index=True))
        st.complete(["cots.parquet"])
    return pd.read_parquet(st.path / "cots.parquet")


def _cot_reads(cfg: Config) -> dict:
    """What a set of G's greedy CoTs depends on: the served models and the CoT decoding fields."""
    return {**_reads(cfg), **config_fields(cfg, "align.max_new_tokens", "align.cot_temperature", "data.seed")}


def _greedy_cot_frame(ctx: Ctx, g: str, split: str, samples: pd.DataFrame, fields: list[dict]) -> pd.DataFrame:
    """G's greedy CoT (each row cached as it comes) and its length for every sample: split, sample, cot, tokens."""
    a = ctx.cfg.align
    texts, tokens = steps.greedy_cots(ctx.llm(), ctx.domain, fields, generator=ctx.adapter(g),
                                      max_new_tokens=a.max_new_tokens, temperature=a.cot_temperature,
                                      seed=ctx.cfg.data.seed) if fields else ([], [])
    return pd.DataFrame({"split": split, "sample": samples["sample"].tolist(), "cot": texts, "tokens": tokens})


def train_validator(ctx: Ctx, name: str, v: str, g: str | None) -> str:
    """Eq. 5-6: V fine-tuned with the Yes/No loss on prompt^Rec with G's greedy CoT (``g=None``: no summary,
    TALLRec) and the labels; it continues from ``v`` (``base`` = a new LoRA)."""
    from ..train.config import YesNoConfig
    from ..train.yesno import train_yesno

    cots = [None] * len(ctx.fields["train"]) if g is None else stage_cots(ctx, g).query("split == 'train'")["cot"]
    st = ctx.run.stage(f"rectune/{name}", after=["samples", *([] if g is None else [f"cots/{g}"])],
                       depends=config_fields(ctx.cfg, "subset.history_len"))
    if not st.done:
        labels = ctx.splits.train["label"].astype(int).tolist()
        io.write_parquet(st.path / "rec.parquet", pd.DataFrame({
            "prompt": [steps.rec_prompt(ctx.domain, f, c) for f, c in zip(ctx.fields["train"], cots, strict=True)],
            "label": labels, "answer": ["Yes." if y else "No." for y in labels], "kind": "label"}))
        st.complete(["rec.parquet"])
    return _train(ctx, name, "rectune", v, f"rectune/{name}", st.path / "rec.parquet", YesNoConfig, train_yesno,
                  reason_share=None)


def stage_eval(ctx: Ctx, g: str | None, v: str) -> pd.DataFrame:
    """V as a recommender on the test samples: p(Yes) of prompt^Rec with G's CoT (``g=None``: no summary)."""
    cots = [None] * len(ctx.fields["test"]) if g is None else stage_cots(ctx, g).query("split == 'test'")["cot"]
    st = ctx.run.stage(f"eval/{g or 'none'}-{v}", after=["samples", *([] if g is None else [f"cots/{g}"]),
                                                         *_adapter_stages(v)], depends=_reads(ctx.cfg))
    if not st.done:
        prompts = [steps.rec_prompt(ctx.domain, f, c) for f, c in zip(ctx.fields["test"], cots, strict=True)]
        test = ctx.splits.test
        io.write_parquet(st.path / "predictions.parquet", pd.DataFrame({
            "sample": test["sample"], "user_id": test["user_id"], "label": test["label"],
            "score": steps.v_scores(ctx.llm(), prompts, ctx.adapter(v))}))
        st.complete(["predictions.parquet"])
    return pd.read_parquet(st.path / "predictions.parquet")


def stage_ctr_samples(ctx: Ctx) -> pd.DataFrame:
    """The backbones' train samples beyond the LLM stages' (``rec.train_samples``; none when it is unset)."""
    st = ctx.run.stage("ctr_samples", after=["data", "samples"], depends=config_fields(
        ctx.cfg, "rec.train_samples", "subset.users", "subset.min_history", "data.seed"))
    if not st.done:
        n, have = ctx.cfg.rec.train_samples, ctx.splits.train
        pool = ctx.full_train[ctx.full_train["hist_item_ids"].map(len) >= ctx.cfg.subset.min_history]
        pool = pool.assign(sample=[f"train:{i}" for i in pool.index])
        pool = pool[~pool["sample"].isin(have["sample"])]
        if ctx.cfg.subset.users is not None:
            users = set(have["user_id"]) | set(ctx.splits.test["user_id"])
            pool = pool[pool["user_id"].isin(users)]
        extra = max(0, (n or 0) - len(have))
        if extra > len(pool):
            raise DataError(f"rec.train_samples = {n} but the train split has only {len(have) + len(pool)} samples "
                            f"with ≥ {ctx.cfg.subset.min_history} history items; lower rec.train_samples")
        rng = np.random.default_rng(ctx.cfg.data.seed + 1)  # not the subset's draw: these come on top of it
        pool = pool.iloc[np.sort(rng.choice(len(pool), size=extra, replace=False))] if extra else pool.iloc[:0]
        io.write_parquet(st.path / "train.parquet", pool.reset_index(drop=True))
        st.complete(["train.parquet"])
    return pd.read_parquet(st.path / "train.parquet")


def stage_ctr_cots(ctx: Ctx, g: str) -> pd.DataFrame:
    """G's greedy CoT for the backbones' extra train samples (as :func:`stage_cots`; each row cached as it comes)."""
    extra = stage_ctr_samples(ctx)
    st = ctx.run.stage(f"ctr_cots/{g}", after=["ctr_samples", *_adapter_stages(g)], depends=_cot_reads(ctx.cfg))
    if not st.done:
        fields = _prompt_fields(extra, ctx.tables, ctx.like_threshold, ctx.cfg.subset.history_len)
        io.write_parquet(st.path / "cots.parquet", _greedy_cot_frame(ctx, g, "train", extra, fields))
        st.complete(["cots.parquet"])
    return pd.read_parquet(st.path / "cots.parquet")


def _ctr_splits(ctx: Ctx):
    """The LLM subset's splits with the backbones' extra train samples added to train."""
    extra = stage_ctr_samples(ctx)
    if extra.empty:
        return ctx.splits
    return dataclasses.replace(ctx.splits, train=pd.concat([ctx.splits.train, extra], ignore_index=True))


def stage_ctr(ctx: Ctx, g: str | None) -> dict:
    """Eq. 7-8: G's CoT per sample, encoded, as a knowledge field of every backbone (``g=None``: backbones alone);
    the backbones train on the LLM train samples plus ``rec.train_samples``' extra ones."""
    cots = None if g is None else pd.concat([stage_cots(ctx, g), stage_ctr_cots(ctx, g)], ignore_index=True)
    rec = ["rec.backbones", "rec.seeds", "rec.epochs", "rec.batch_size", "rec.valid_fraction", "rec.history_len"]
    # the backbones read the item / user tables as well as the samples: "data" stands for them
    st = ctx.run.stage(f"ctr/{g or 'none'}", after=["data", "samples", "ctr_samples",
                                                    *([] if g is None else [f"cots/{g}", f"ctr_cots/{g}"])],
                       depends=config_fields(ctx.cfg, *rec, *([] if g is None else ["rec.encoder"])))
    if not st.done:
        splits, variant = _ctr_splits(ctx), {"base": None}
        if cots is not None:
            from ..knowledge import load_encoder

            emb = load_encoder(ctx.cfg.rec.encoder).encode(cots["cot"].tolist())
            vec = dict(zip(cots["split"] + "/" + cots["sample"], list(emb), strict=True))
            splits = dataclasses.replace(splits, **{s: getattr(splits, s).assign(cot_knowledge=[
                vec[f"{s}/{k}"] for k in getattr(splits, s)["sample"]]) for s in ("train", "test")})
            variant = {"cot": {"sample": "cot_knowledge", "dim": emb.shape[1]}}
        preds: list[pd.DataFrame] = []
        io.write_json(st.path / "results.json", train_knowledge_backbones(splits, ctx.tables, variant, ctx.cfg.rec,
                                                                          predictions=preds))
        io.write_parquet(st.path / "predictions.parquet", pd.concat(preds, ignore_index=True))
        st.complete(["results.json", "predictions.parquet"])
    res = json.loads((st.path / "results.json").read_text())
    return {b: next(iter(by_variant.values())) for b, by_variant in res.items()}


# ---------------------------------------------------------------------------------------------- Alg. 2

def _round_row(ctx: Ctx, arm: str, r: int, g: str, v: str, feedback: dict | None) -> dict:
    """Per round: V's AUC / ACC, the backbones' AUC / ACC / LogLoss with G's CoT, rewards, skips, CoT length."""
    preds = stage_eval(ctx, g, v)
    y, p = preds["label"].to_numpy(), preds["score"].to_numpy()
    cots = stage_cots(ctx, g)
    fb = feedback or {}
    return {"arm": arm, "round": r, "G": g, "V": v, "v_auc": metrics.auc(y, p), "v_acc": metrics.accuracy(y, p),
            "v_auc_ci": steps.user_bootstrap_auc(preds["user_id"].to_numpy(), y, p, seed=ctx.cfg.data.seed),
            "ctr": {b: {k: m[k] for k in ("auc", "acc", "logloss")} for b, m in stage_ctr(ctx, g).items()}
            if _ctr_arm(ctx.cfg, arm) else {},
            "reward_chosen": fb.get("reward_chosen"), "reward_rejected": fb.get("reward_rejected"),
            "skipped_share": fb.get("skipped_share"), "cot_tokens": float(cots["tokens"].mean()),
            "cot_empty_share": float((cots["cot"].str.len() == 0).mean())}


def _ctr_arm(cfg: Config, arm: str) -> bool:
    """Do this arm's rounds get backbone rows (``rec.arms``)?"""
    return arm == "trackrec" or cfg.rec.arms is None or arm in cfg.rec.arms


def run_arm(ctx: Ctx, arm: str, g0: str | None) -> list[dict]:
    """Alg. 2: round 0 is (G₀, base V); round r = Alg. 1 → S-DPO on G → G's greedy CoTs → Rec-tuning of V,
    both inheriting round r-1 (V from the base each round with ``rectune.from_base``)."""
    distill, align, rectune = ARMS[arm]
    g, v = (g0 if distill else "base"), "base"
    rounds = ctx.cfg.rounds if arm == "trackrec" else (ctx.cfg.ablation_rounds or ctx.cfg.rounds)
    rows = [_round_row(ctx, arm, 0, g, v, None)]
    for r in range(1, rounds + 1):
        fb = None
        if align:
            fb = stage_feedback(ctx, arm, r, g, v)
            g = train_generator(ctx, arm, r, g)
        if rectune:
            v = train_validator(ctx, f"{arm}-V{r}", "base" if ctx.cfg.rectune.from_base else v, g)
        rows.append(_round_row(ctx, arm, r, g, v, fb))
        ctx.run.log(f"{arm} round {r}: V AUC {rows[-1]['v_auc']:.4f}, CoT {rows[-1]['cot_tokens']:.1f} tokens")
    return rows


# relative cost of a stage by kind, for the whole-run ETA (RunDir.eta), from the per-call costs in the header of
# configs/trackrec/ml100k-cpu.yaml (in units of ~25 s there): feedback ≈ 12 × 4 × (C + V) ≈ 2, its S-DPO run
# ≈ 12 × 8 s ≈ 4, a Rec-tuning ≈ 32 × 6 s ≈ 8 (its data stage ≈ 0), distillation ≈ 100 s = teacher 2 + SFT 2
STAGE_KIND_WEIGHTS = {"data": 0.2, "samples": 0.2, "distill": 2.0, "eval": 1.0, "cots": 5.0, "ctr": 0.7,
                      "ctr_samples": 0.1, "ctr_cots": 5.0,
                      "feedback": 2.0, "rectune": 0.1, "train-sft": 2.0, "train-sdpo": 4.0, "train-yesno": 8.0}


def stage_kind(name: str) -> str:
    """The :data:`STAGE_KIND_WEIGHTS` key of a stage name (``train/trackrec-G1`` → ``train-sdpo``)."""
    if name.endswith("/feedback"):
        return "feedback"
    if name.startswith("train/"):
        adapter = name.split("/", 1)[1]
        return "train-sft" if adapter == "G0" else "train-sdpo" if "-G" in adapter else "train-yesno"
    return name.split("/")[0]


def planned_stages(cfg: Config) -> list[str]:
    """The stages :func:`run` announces, in order, for counting ("stage 9/29 cots/trackrec-G1") and the ETA.
    Adapter names follow :func:`run_arm`; when a round keeps no preference group G keeps its name and the
    planned ``train/<arm>-G<r>`` and ``cots/<arm>-G<r>`` never run (their numbers are skipped, the count stays an
    upper bound)."""
    names: list[str] = []

    def add(*ns: str) -> None:
        names.extend(n for n in ns if n not in names)

    add("data", "samples")
    if any(ARMS[a][0] for a in ["trackrec", *cfg.ablations]):
        add("distill", "train/G0")
    for arm in ["trackrec", *cfg.ablations]:
        distill, align, rectune = ARMS[arm]
        g, v = ("G0" if distill else "base"), "base"

        def ctr(g: str, arm: str = arm) -> list[str]:
            return ["ctr_samples", f"ctr_cots/{g}", f"ctr/{g}"] if _ctr_arm(cfg, arm) else []

        add(f"cots/{g}", f"eval/{g}-{v}", *ctr(g))
        for r in range(1, (cfg.rounds if arm == "trackrec" else (cfg.ablation_rounds or cfg.rounds)) + 1):
            if align:
                add(f"{arm}/r{r}/feedback", f"train/{arm}-G{r}")
                g = f"{arm}-G{r}"
            if rectune:
                add(f"cots/{g}", f"rectune/{arm}-V{r}", f"train/{arm}-V{r}")
                v = f"{arm}-V{r}"
            add(f"cots/{g}", f"eval/{g}-{v}", *ctr(g))
    if "backbone" in cfg.baselines:
        add("ctr_samples", "ctr/none")
    if "zero_shot" in cfg.baselines:
        add("eval/none-base")
    if "tallrec" in cfg.baselines:
        add("rectune/tallrec", "train/tallrec", "eval/none-tallrec")
    return names


def evaluated_splits(cfg: Config, run_dir: RunDir):
    """(splits, tables) the run's ``split_checksum`` is of (the seeded subset of the ``samples`` stage, no
    validation rows): ``reasonrec bench`` trains the classic baselines on them."""
    ctx = stage_samples(cfg, run_dir)
    return ctx.splits, ctx.tables


def _round_curves(arms: dict[str, list[dict]]) -> list[dict]:
    """The report's round curves (Fig. 5's view): V's AUC with its interval, each backbone's AUC, the CoT length."""
    curves = [{"title": "V as a recommender: test AUC per round (95% user-bootstrap interval)", "x": "round",
               "y": "AUC", "series": {arm: [[r["round"], r["v_auc"], *(r.get("v_auc_ci") or [None, None])]
                                            for r in rows] for arm, rows in arms.items()}}]
    for b in dict.fromkeys(k for rows in arms.values() for r in rows for k in r["ctr"]):
        curves.append({"title": f"{b} with the CoT field: test AUC per round", "x": "round", "y": "AUC",
                       "series": {arm: [[r["round"], r["ctr"][b]["auc"]] for r in rows if b in r["ctr"]]
                                  for arm, rows in arms.items()}})
    curves.append({"title": "mean greedy CoT length per round (Tab. 5a)", "x": "round", "y": "tokens",
                   "series": {arm: [[r["round"], r["cot_tokens"]] for r in rows] for arm, rows in arms.items()}})
    return curves


def run(cfg: Config, run_dir: RunDir) -> dict:
    run_dir.stages = planned_stages(cfg)
    run_dir.stage_weights = {n: STAGE_KIND_WEIGHTS.get(stage_kind(n), 1.0) for n in run_dir.stages}
    ctx = stage_samples(cfg, run_dir)
    needs_g0 = any(ARMS[a][0] for a in ["trackrec", *cfg.ablations])
    g0 = stage_distill(ctx) if needs_g0 else None
    arms = {a: run_arm(ctx, a, g0) for a in ["trackrec", *cfg.ablations]}
    baselines = {}
    if "backbone" in cfg.baselines:
        baselines["backbone"] = {"ctr": stage_ctr(ctx, None)}
    for name, v in (("zero_shot", "base"), ("tallrec", "tallrec")):
        if name in cfg.baselines:
            v = train_validator(ctx, "tallrec", "base", None) if name == "tallrec" else v
            preds = stage_eval(ctx, None, v)
            y, p = preds["label"].to_numpy(), preds["score"].to_numpy()
            baselines[name] = {"v_auc": metrics.auc(y, p), "v_acc": metrics.accuracy(y, p), "v_auc_ci":
                               steps.user_bootstrap_auc(preds["user_id"].to_numpy(), y, p, seed=cfg.data.seed)}
    baselines["kar"] = {"ctr": arms["trackrec"][0]["ctr"]}   # the un-aligned round-0 CoT in the backbones
    # every per-sample prediction (V and each backbone) → the shared results schema, Δ vs cfg.results.reference
    runs = [(f"{r['arm']}/r{r['round']}", r["G"], r["V"]) for rows in arms.values() for r in rows]
    runs += [(k, None, {"zero_shot": "base", "tallrec": "tallrec"}[k]) for k in ("zero_shot", "tallrec") if k in baselines]
    frames = [R.prediction_frame("validator", name, 0, p["user_id"], p["label"], p["score"])
              for name, g, v in runs for p in [stage_eval(ctx, g, v)]]
    ctr_runs = [(f"{r['arm']}/r{r['round']}", r["G"]) for rows in arms.values() for r in rows if r["ctr"]]
    ctr_runs += [("backbone", None)] if "backbone" in baselines else []
    frames += [pd.read_parquet(run_dir.stage(f"ctr/{g or 'none'}").path / "predictions.parquet").assign(variant=name)
               for name, g in ctr_runs]
    io.write_parquet(run_dir.root / "predictions.parquet", pd.concat(frames, ignore_index=True))
    data = {"train": len(ctx.splits.train), "ctr_train": len(_ctr_splits(ctx).train), "test": len(ctx.splits.test),
            "test_users": int(ctx.splits.test["user_id"].nunique())}
    summary = {"method": "trackrec", "data": data, "arms": arms, "baselines": baselines,
               "report_curves": _round_curves(arms),
               # round 0's and the last round's greedy CoTs of the full method, next to their user's test samples
               "report_texts": [{"path": f"cots/{g}/cots.parquet", "id_column": "sample", "columns": ["cot"],
                                 "caption": f"{name} greedy CoTs (G = {g})"}
                                for name, g in (("round 0", arms["trackrec"][0]["G"]),
                                                (f"round {arms['trackrec'][-1]['round']}", arms["trackrec"][-1]["G"]))
                                if g != "base"]}
    splits = ctx.splits
    res = R.build_results(
        pd.read_parquet(run_dir.root / "predictions.parquet"), cfg.results, method="trackrec",
        dataset=splits.dataset, protocol=splits.protocol,
        split_checksum=R.splits_checksum(splits),
        config=cfg.model_dump(mode="json"), packages=package_versions(), predictions="predictions.parquet",
        details=summary)
    R.write_results(run_dir.root, res, R.Timings.of_run(run_dir.root))
    io.write_text(run_dir.root / "results.md", steps.results_table(summary) + "\n" + R.render_markdown(res))
    return summary

