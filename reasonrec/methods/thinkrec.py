"""ThinkRec (Yu et al. 2025): thinking activation, collaborative tokens and instance-wise LoRA expert fusion.
A composition of the substrate; the paper's steps map to code as follows:

============================  =====================================================================================
§3.2.1 item augmentation      :func:`stage_keywords` (≤ 10 keywords per item, an item column) → prompts with the
                              last 10 interactions, likes and dislikes marked (``thinkrec_rec`` template)
§3.2.2 reasoning synthesis    :func:`stage_reasons`: the teacher with the reasoning prompt (App. B.2), re-asked with
                              the hint "the correct answer is …" until its Yes/No matches the label
§3.2.2, Eq. 4-7 thinking      :func:`stage_lora`: the Yes/No mixed trainer (:mod:`reasonrec.train.yesno`): LM + BCE,
activation                    weights 0.1/0.9 with a reason, 0.9/0.1 without, reasoning : label = 0.2 : 0.8
§3.1 Eq. 1-2, §3.4 CoLLM      :func:`stage_collab` (MF on the same split; LightGCN / SASRec optional) →
token                         :func:`stage_projector`: MLP projector to one user and one item token, LoRA frozen
§3.3 experts, Eq. 8-9         :func:`stage_experts` (groups of MF user embeddings, per-group LoRAs on the last 8
                              layers) → :func:`stage_eval`: the gate's two thresholds, exact per-user fusion
§3.5 outputs                  :func:`stage_eval`: p(Yes) in one forward pass per sample; reasons generated on
                              request for the held-out reasoning samples (METEOR, BLEU, ROUGE-L, BERTScore)
============================  =====================================================================================

Staged training (§3.4): the global LoRA on text; MF in parallel; experts from the global LoRA on each user group;
finally the projector on all training data with soft tokens, every LoRA fixed. One projector serves the global
LoRA and the experts, as in the paper.

Arms (same test samples, Tab. 2 and 4): ``thinkrec``; ablations ``no_think`` (label samples only, no reasons),
``no_experts`` (the global LoRA alone), ``no_both``. Baselines: ``tallrec`` (LoRA Yes/No on text), ``collm``
(TALLRec + collaborative tokens), ``mf``, ``lightgcn``, ``sasrec``, ``gsasrec``. In this composition ``no_both``
and ``collm`` are the same model (label-only LoRA + projector on ThinkRec's prompt, which keeps the keywords and
dislikes): it is scored once and reported as ``collm``.

Score (``train.score``): ``yes_vs_no`` (default) = σ(logit(Yes) − logit(No)), the log-odds the BCE trains and what
``choice_probs`` returns; ``yes_logit`` = σ(logit(Yes)), ThinkRec's and CoLLM's code. Training and scoring use the
same one.

Departures, with reasons: keywords by an embedding extractor instead of a summarisation model (offline, see
:mod:`.thinkrec_steps`); the expert fusion is exact (Σ w_i s_i B_i A_i, :mod:`reasonrec.train.experts`) where the
public code's peft ``linear`` merge has cross terms; cold users (no MF embedding: zeros) get uniform gate weights,
hence the global LoRA by the entropy rule.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field

from .. import io
from ..config import DataSection, Section
from ..eval import results as R
from ..llm.base import LLMSection
from ..llm.engine import EngineSection
from ..llm.prompts import sample_fields
from ..runs import RunDir, config_fields, package_versions
from ..train.config import ExpertsSection
from . import thinkrec_steps as steps
from .common import pointwise_samples_stage, training_stage

Ablation = Literal["no_think", "no_experts", "no_both"]
Baseline = Literal["tallrec", "collm", "mf", "lightgcn", "sasrec", "gsasrec"]
# arm → (LoRA trained with reasons, experts, collaborative tokens)
ARMS = {"thinkrec": (True, True, True), "no_experts": (True, False, True), "no_think": (False, True, True),
        "no_both": (False, False, True), "collm": (False, False, True), "tallrec": (False, False, False)}
CLASSIC = ("mf", "lightgcn", "sasrec", "gsasrec")


class SubsetSection(Section):
    """The samples the LLM stages cover (the classic models train on the whole train split). Fields:
        users: test users sampled (seeded; warm and cold alike); ``None`` = all. test_samples: test samples kept
            (seeded) of those users. train_samples: LLM training samples drawn (seeded) from all train samples.
        min_history: samples with a shorter history are dropped. history_len: interactions shown (§3.2.1: 10).
    """

    users: int | None = None
    train_samples: int | None = Field(None, ge=2)
    test_samples: int | None = Field(None, ge=2)
    min_history: int = Field(1, ge=0)
    history_len: int = Field(10, ge=1)


class ModelSection(Section):
    """The local LLM (paper: Llama-3-8B-Instruct). Fields: name; options (transformers backend options, e.g.
    batch_size, dtype); max_length (prompt + answer tokens in training); lora_r / lora_alpha (paper 8 / 16)."""

    name: str = "smollm2-135m"
    options: dict[str, Any] = {}
    max_length: int = Field(1024, ge=64)
    lora_r: int = Field(8, ge=1)
    lora_alpha: int = Field(16, ge=1)


class KeywordsSection(Section):
    """§3.2.1. Fields: encoder (the extractor's embedding model, default the bundled MiniLM); k (≤ 10 keywords)."""

    encoder: str = "minilm"
    k: int = Field(steps.MAX_KEYWORDS, ge=1, le=steps.MAX_KEYWORDS)


class ReasonsSection(Section):
    """§3.2.2 reasoning synthesis. Fields: train_samples (train samples given a teacher reason); test_samples
    (held-out test samples with a teacher reason: the references of the reason-quality metrics); max_tries (asks
    per sample, the first without hint); max_new_tokens; temperature of the first ask (re-asks sample at ≥ 0.7);
    keep_gave_up: also train on the last reason of a sample whose teacher never matched the label (default off:
    that reason argues for the wrong answer; on in the smoke run, whose random teacher never matches)."""

    keep_gave_up: bool = False
    train_samples: int = Field(64, ge=1)
    test_samples: int = Field(16, ge=0)
    max_tries: int = Field(3, ge=1)
    max_new_tokens: int = Field(256, ge=8)
    temperature: float = Field(0.0, ge=0)


class TrainSection(Section):
    """The LoRA trainings (global and experts). Fields: epochs, learning_rate (paper 1e-4), batch_size,
    save_steps; reason_share (0.2), reason_weights / label_weights ([bce, lm]: 0.1/0.9 and 0.9/0.1); score
    (``yes_vs_no`` default, or ``yes_logit`` as the public code); expert_epochs (default ``epochs``)."""

    epochs: float = Field(1.0, gt=0)
    learning_rate: float = Field(1e-4, gt=0)
    batch_size: int = Field(4, ge=1)
    save_steps: int = Field(50, ge=1)
    reason_share: float = Field(0.2, gt=0, lt=1)
    reason_weights: tuple[float, float] = (0.1, 0.9)
    label_weights: tuple[float, float] = (0.9, 0.1)
    score: Literal["yes_vs_no", "yes_logit"] = "yes_vs_no"
    expert_epochs: float | None = Field(None, gt=0)


class CollabSection(Section):
    """The collaborative model and the projector. Fields: model (``mf``, option ``lightgcn`` / ``sasrec``);
    dim (ThinkRec MF 256; 64 on CPU); time_budget_s; projector_epochs, projector_lr; hidden_mult (ThinkRec
    ``proj_mid``: 5)."""

    model: Literal["mf", "lightgcn", "sasrec"] = "mf"
    dim: int = Field(64, ge=2)
    time_budget_s: float = Field(300.0, gt=0)
    projector_epochs: float = Field(1.0, gt=0)
    projector_lr: float = Field(1e-3, gt=0)
    hidden_mult: int = Field(5, ge=1)


class GenerateSection(Section):
    """Reasons on request. Fields: max_new_tokens; temperature (0 = greedy; > 0 only for random smoke models)."""

    max_new_tokens: int = Field(64, ge=4)
    temperature: float = Field(0.0, ge=0)


class Config(Section):
    """A ThinkRec experiment (``method: thinkrec``); see ``configs/thinkrec/``."""

    method: Literal["thinkrec"] = "thinkrec"
    run_dir: Path
    engine: EngineSection = Field(default_factory=EngineSection)  # where teacher LLM calls run (llm/engine.py); the soft-token scorer stays in-process
    data: DataSection = Field(default_factory=lambda: DataSection(protocol="collm"))
    subset: SubsetSection = Field(default_factory=SubsetSection)
    model: ModelSection = Field(default_factory=ModelSection)
    teacher: LLMSection = Field(default_factory=LLMSection)
    keywords: KeywordsSection = Field(default_factory=KeywordsSection)
    reasons: ReasonsSection = Field(default_factory=ReasonsSection)
    train: TrainSection = Field(default_factory=TrainSection)
    collab: CollabSection = Field(default_factory=CollabSection)
    experts: ExpertsSection = Field(default_factory=lambda: ExpertsSection(k=2))
    generate: GenerateSection = Field(default_factory=GenerateSection)
    ablations: list[Ablation] = Field(default_factory=lambda: ["no_think", "no_experts", "no_both"])
    baselines: list[Baseline] = Field(default_factory=lambda: ["tallrec", "collm", "mf", "lightgcn", "sasrec",
                                                               "gsasrec"])
    bertscore_encoder: str = "minilm"
    results: R.ResultsSection = Field(default_factory=lambda: R.ResultsSection(
        reference="collm", metrics=["auc", "uauc", "ndcg@5", "map@5"]))


def check(cfg: Config, checker) -> None:
    """Every name the config gives, resolved before any stage runs (``reasonrec run --dry-run``)."""
    checker.data("data", cfg.data)
    checker.llm("teacher.name", cfg.teacher.name, cfg.teacher.backend, cfg.teacher.options)
    checker.llm("model.name", cfg.model.name, "transformers", cfg.model.options, trainable=True)
    checker.encoder("keywords.encoder", cfg.keywords.encoder)
    checker.encoder("bertscore_encoder", cfg.bertscore_encoder)


def variants(cfg: Config) -> list[str]:
    """The LLM arms to score; ``no_both`` is folded into ``collm`` when both are asked for (same model)."""
    out = ["thinkrec", *cfg.ablations, *[b for b in cfg.baselines if b in ("tallrec", "collm")]]
    if "collm" in out and "no_both" in out:
        out.remove("no_both")
    return list(dict.fromkeys(out))


# ---------------------------------------------------------------------------------------------- context

@dataclasses.dataclass
class Ctx:
    cfg: Config
    run: RunDir
    full: Any             # the protocol's whole splits (classic models, warm / cold)
    splits: Any           # the LLM subset: train and test samples with a ``sample`` key
    tables: Any
    domain: str
    like_threshold: float
    items: dict[int, dict] = dataclasses.field(default_factory=dict)

    def fields(self, split: str) -> list[dict]:
        df = getattr(self.splits, split)
        h = self.cfg.subset.history_len
        return [sample_fields(r, self.items, None, like_threshold=self.like_threshold, max_history=h)
                for r in df.to_dict("records")]


# ---------------------------------------------------------------------------------------------- fingerprints
# Every producing stage names the config fields it reads and the stages whose artifacts it reads (runs.py), so a
# changed key recomputes exactly the stages that read it and everything downstream. Each training is a stage
# (``train/lora-<data>``, ``train/experts-<data>``, ``train/projector-<data>``: the trainer's output_dir) whose
# weights' checksums the stages using them see. Prompts read the items' keywords and the samples' histories, so
# every stage that builds one reads ``keywords`` and ``subset.history_len``.

PROMPT_STAGES = ["data", "samples", "keywords"]


def _yesno_reads(cfg: Config, *fields: str) -> dict[str, Any]:
    """What a Yes/No training reads (:func:`_yesno_cfg`): the base model, its LoRA shape, the seed, the trainer's
    batch and loss fields, and ``fields``."""
    return config_fields(cfg, "model.name", "model.max_length", "model.lora_r", "model.lora_alpha", "data.seed",
                         "train.batch_size", "train.reason_share", "train.reason_weights", "train.label_weights",
                         "train.score", *fields)


def stage_samples(cfg: Config, run: RunDir) -> Ctx:
    """CoLLM-protocol samples: a seeded set of test users (warm and cold), their test samples, and a seeded draw
    of train samples from all users."""
    kctx, splits = pointwise_samples_stage(cfg, run, warm_only=False)
    return Ctx(cfg, run, kctx.splits, splits, kctx.tables, kctx.domain, kctx.like_threshold)


def stage_keywords(ctx: Ctx) -> None:
    """§3.2.1: ≤ k keywords per item (cached in the stage); they become the items' ``keywords`` column."""
    # the item table is read from the raw files the "data" stage's fingerprint covers
    st = ctx.run.stage("keywords", after=["data"], depends=config_fields(ctx.cfg, "keywords.encoder", "keywords.k"))
    if not st.done:
        from ..knowledge import load_encoder

        items = ctx.tables.items
        kw = steps.extract_keywords(items.to_dict("records"), load_encoder(ctx.cfg.keywords.encoder), ctx.cfg.keywords.k)
        io.write_parquet(st.path / "items.parquet", pd.DataFrame({"item_id": items["item_id"], "keywords": kw}))
        st.complete(["items.parquet"])
    kw = pd.read_parquet(st.path / "items.parquet").set_index("item_id")["keywords"].to_dict()
    ctx.items = {int(r["item_id"]): {**r, "keywords": kw.get(int(r["item_id"]), "")}
                 for r in ctx.tables.items.to_dict("records")}


def _classic(ctx: Ctx, st, name: str):
    """Train classic model ``name`` on the protocol's whole train split; score the LLM's test samples into the
    stage's ``predictions.parquet`` (column ``score``) and ``metrics.json``; returns the fitted model."""
    from ..rec.baselines import train as B
    from ..rec.baselines.data import eval_set

    c = ctx.cfg.collab
    ev = eval_set(ctx.splits.test, 50)
    bc = B.BaselineConfig(dim=c.dim, time_budget_s=c.time_budget_s, seed=ctx.cfg.data.seed)
    metrics, rec = B.train_baseline(name, ctx.full, ctx.tables, bc, return_model=True)
    io.write_parquet(st.path / "predictions.parquet", pd.DataFrame({"score": rec.score(ev.user_ids, ev.item_ids,
                                                                                       ev.hist)}))
    io.write_json(st.path / "metrics.json", {name: metrics})
    return rec


def _classic_depends(ctx: Ctx) -> dict[str, Any]:
    # the protocol's whole train split and tables ("data"), scored on the LLM's test samples ("samples")
    return config_fields(ctx.cfg, "collab.dim", "collab.time_budget_s", "data.seed")


def stage_collab(ctx: Ctx) -> dict[str, Any]:
    """MF (or LightGCN / SASRec) on the protocol's whole train split: its user and item embeddings (the soft
    tokens' and the gate's input) and its test predictions."""
    st = ctx.run.stage("collab", after=["data", "samples"],
                       depends={**_classic_depends(ctx), **config_fields(ctx.cfg, "collab.model")})
    if not st.done:
        rec = _classic(ctx, st, ctx.cfg.collab.model)
        np.save(st.path / "user_emb.npy", rec.user_embeddings().astype(np.float32))
        np.save(st.path / "item_emb.npy", rec.item_embeddings().astype(np.float32))
        st.complete(["user_emb.npy", "item_emb.npy", "predictions.parquet", "metrics.json"])
    return {"user": np.load(st.path / "user_emb.npy"), "item": np.load(st.path / "item_emb.npy")}


def stage_baseline(ctx: Ctx, name: str) -> tuple[np.ndarray, dict]:
    """A classic baseline's scores of the LLM's test samples and its protocol metrics (``collab.model``: the
    collab stage's model, not trained twice)."""
    if name == ctx.cfg.collab.model:
        st = ctx.run.stage("collab")   # a look-up: stage_collab ran first
    else:
        st = ctx.run.stage(f"baseline/{name}", after=["data", "samples"], depends=_classic_depends(ctx))
        if not st.done:
            _classic(ctx, st, name)
            st.complete(["predictions.parquet", "metrics.json"])
    return (pd.read_parquet(st.path / "predictions.parquet")["score"].to_numpy(),
            json.loads((st.path / "metrics.json").read_text())[name])


def _teacher(ctx: Ctx):
    from ..llm.base import load_llm

    t = ctx.cfg.teacher
    return load_llm(t.name, backend=t.backend, cache=t.cache or ctx.run.root / "llm_cache.sqlite", **t.options)


def stage_reasons(ctx: Ctx) -> dict:
    """§3.2.2: teacher reasons for a seeded set of train samples (reasoning data) and of test samples (held-out
    references); every teacher call is committed to the run's cache as it arrives."""
    cfg = ctx.cfg
    st = ctx.run.stage("reasons", after=PROMPT_STAGES, depends=config_fields(
        cfg, "teacher.name", "teacher.backend", "teacher.options", "reasons.train_samples", "reasons.test_samples",
        "reasons.max_tries", "reasons.max_new_tokens", "reasons.temperature", "subset.history_len", "data.seed"))
    if not st.done:
        teacher = _teacher(ctx)
        rng = np.random.default_rng(cfg.data.seed + 7)
        frames, stats = [], {}
        for split, n in (("train", cfg.reasons.train_samples), ("test", cfg.reasons.test_samples)):
            df = getattr(ctx.splits, split)
            idx = np.sort(rng.choice(len(df), size=min(n, len(df)), replace=False))
            fields = ctx.fields(split)
            syn = steps.synthesize_reasons(teacher, ctx.domain, [fields[i] for i in idx], df["label"].to_numpy()[idx],
                                           max_tries=cfg.reasons.max_tries, max_new_tokens=cfg.reasons.max_new_tokens,
                                           temperature=cfg.reasons.temperature, seed=cfg.data.seed)
            frames.append(pd.DataFrame({"split": split, "row": idx, "sample": df["sample"].to_numpy()[idx],
                                        "reason": syn.reasons, "answer": syn.answers, "tries": syn.tries,
                                        "gave_up": syn.gave_up}))
            stats[split] = syn.stats()
            if stats[split]["samples"] and stats[split]["gave_up_share"] > 0.5:
                ctx.run.warn(f"reasons/{split}: the teacher gave up on {stats[split]['gave_up']} of "
                             f"{stats[split]['samples']} samples (Yes/No never matched the label)")
        io.write_parquet(st.path / "reasons.parquet", pd.concat(frames, ignore_index=True))
        st.complete(["reasons.parquet"], stats=stats)
    return {"table": pd.read_parquet(st.path / "reasons.parquet"), "stats": st.info()["stats"]}


def _placeholder(ctx: Ctx) -> str:
    from ..train.common import load_tokenizer

    tok = load_tokenizer(ctx.cfg.model.name)
    return tok.unk_token or tok.eos_token


def _yesno_cfg(ctx: Ctx, name: str, data: Path, *, epochs: float, lr: float, init: Path | None = None,
               last_layers: int | None = None, soft: bool = False) -> dict:
    m, t = ctx.cfg.model, ctx.cfg.train
    out = {"model": {"name": m.name, "init_adapter": init, "trainable_last_layers": last_layers,
                     "lora": {"r": m.lora_r, "alpha": m.lora_alpha, "targets": "all-linear"}},
           "data": {"train": data},
           "training": {"output_dir": ctx.run.root / "train" / name, "seed": ctx.cfg.data.seed, "learning_rate": lr,
                        "num_train_epochs": epochs, "per_device_train_batch_size": t.batch_size,
                        "max_length": m.max_length, "lr_scheduler_type": "cosine", "warmup_ratio": 0.1,
                        "logging_steps": 1, "save_steps": t.save_steps},
           "reason_share": t.reason_share, "reason_weights": t.reason_weights, "label_weights": t.label_weights,
           "score": t.score}
    if soft:
        out["soft_token"] = {"placeholder": _placeholder(ctx), "column": "soft_emb",
                             "hidden_mult": ctx.cfg.collab.hidden_mult, "train_lora": False}
    return out


def stage_data(ctx: Ctx, think: bool, reasons: pd.DataFrame, emb: dict) -> Path:
    """The training table of one LoRA: every train sample as a label sample; with ``think``, the reasoning
    samples (teacher matched the label) as well, on the prompt that asks for the reason. Soft vectors
    (user, item) per row for the projector stage."""
    # the soft vectors are the collab embeddings; the placeholder token is the model's tokenizer's; label data
    # reads no reason
    st = ctx.run.stage(f"data/{'think' if think else 'label'}", after=[
        *PROMPT_STAGES, "collab", *(["reasons"] if think else [])], depends=config_fields(
        ctx.cfg, "subset.history_len", "model.name", *(["reasons.keep_gave_up"] if think else [])))
    if not st.done:
        df, fields, ph = ctx.splits.train, ctx.fields("train"), _placeholder(ctx)
        labels = df["label"].astype(int).to_numpy()
        soft = [[emb["user"][u].tolist(), emb["item"][i].tolist()] for u, i in zip(df["user_id"], df["item_id"],
                                                                                   strict=True)]
        rows = [{"user_id": int(df["user_id"].iloc[j]), "label": int(labels[j]), "kind": "label",
                 "answer": steps.answer_text(labels[j]), "prompt": steps.rec_prompt(ctx.domain, fields[j]),
                 "soft_prompt": steps.rec_prompt(ctx.domain, fields[j], True, ph), "soft_emb": soft[j]}
                for j in range(len(df))]
        if think:
            ok = reasons[(reasons["split"] == "train") & (reasons["reason"].str.len() > 0)]
            if not ctx.cfg.reasons.keep_gave_up:
                ok = ok[~ok["gave_up"].astype(bool)]
            for j, reason in zip(ok["row"], ok["reason"], strict=True):
                rows.append({"user_id": int(df["user_id"].iloc[j]), "label": int(labels[j]), "kind": "reason",
                             "answer": steps.answer_text(labels[j], reason),
                             "prompt": steps.think_prompt(ctx.domain, fields[j]),
                             "soft_prompt": steps.think_prompt(ctx.domain, fields[j], True, ph), "soft_emb": soft[j]})
            if ok.empty:
                ctx.run.warn("data/think: no reasoning sample (the teacher never matched a label); the LoRA is "
                             "trained on label samples only")
        io.write_parquet(st.path / "text.parquet", pd.DataFrame(rows).drop(columns=["soft_prompt", "soft_emb"]))
        io.write_parquet(st.path / "soft.parquet", pd.DataFrame(rows).drop(columns=["prompt"]).rename(
            columns={"soft_prompt": "prompt"}))
        st.complete(["text.parquet", "soft.parquet"])
    return st.path


def stage_lora(ctx: Ctx, think: bool, data: Path) -> Path:
    """§3.2.2 / Eq. 7: the global LoRA on text (mixed reasoning + label samples, or label samples only)."""
    from ..train.config import YesNoConfig
    from ..train.yesno import train_yesno

    t = ctx.cfg.train
    name = "think" if think else "label"
    st = training_stage(ctx.run, f"lora-{name}", after=[f"data/{name}"],
                        depends=_yesno_reads(ctx.cfg, "train.epochs", "train.learning_rate"))
    if not st.done:
        cfg = YesNoConfig.model_validate(_yesno_cfg(ctx, f"lora-{name}", data / "text.parquet", epochs=t.epochs,
                                                    lr=t.learning_rate))
        st.complete(["adapter", "train_log.json"], skipped=train_yesno(cfg).skipped)
    return st.path / "adapter"


def stage_experts(ctx: Ctx, think: bool, data: Path, lora: Path, emb: dict) -> Path:
    """§3.3.1: groups of the MF user embeddings of the training users; one LoRA per group from the global LoRA,
    only its last ``experts.last_layers`` layers trained."""
    from ..train.config import YesNoConfig
    from ..train.experts import train_experts

    name = "think" if think else "label"
    # the groups are of the collab user embeddings; every expert starts from the global LoRA
    st = training_stage(ctx.run, f"experts-{name}", after=[f"data/{name}", f"train/lora-{name}", "collab"],
                        depends=_yesno_reads(ctx.cfg, "train.expert_epochs", "train.epochs", "train.learning_rate",
                                             "experts.method", "experts.k", "experts.k_range",
                                             "experts.last_layers"))
    if not st.done:
        t = ctx.cfg.train
        df = pd.read_parquet(data / "text.parquet")
        cfg = YesNoConfig.model_validate(_yesno_cfg(ctx, f"experts-{name}/tmp", data / "text.parquet",
                                                    epochs=t.expert_epochs or t.epochs, lr=t.learning_rate))
        users = sorted(int(u) for u in df["user_id"].unique())
        res = train_experts(cfg, lora, df, {u: emb["user"][u] for u in users}, ctx.cfg.experts, out_dir=st.path)
        st.complete(["experts.json", *(Path(d).relative_to(st.path).as_posix() for d in res.adapter_dirs)])
    return st.path


def stage_projector(ctx: Ctx, think: bool, data: Path, lora: Path) -> Path:
    """§3.4, last stage: the MLP projector on all training rows with the (user, item) soft tokens, LoRA frozen."""
    from ..train.config import YesNoConfig
    from ..train.yesno import train_yesno

    c = ctx.cfg.collab
    name = "think" if think else "label"
    st = training_stage(ctx.run, f"projector-{name}", after=[f"data/{name}", f"train/lora-{name}"],
                        depends=_yesno_reads(ctx.cfg, "collab.projector_epochs", "collab.projector_lr",
                                             "collab.hidden_mult"))
    if not st.done:
        cfg = YesNoConfig.model_validate(_yesno_cfg(ctx, f"projector-{name}", data / "soft.parquet",
                                                    epochs=c.projector_epochs, lr=c.projector_lr, init=lora,
                                                    soft=True))
        st.complete(["adapter", "train_log.json"], skipped=train_yesno(cfg).skipped)
    return st.path / "adapter"


def load_projector(folder: Path):
    import torch

    from ..train.yesno import PROJECTOR_FILE, make_projector

    meta = json.loads((folder / "soft_projector.json").read_text())
    proj = make_projector(meta["in_dim"], meta["hidden_size"], meta["hidden_mult"])
    proj.load_state_dict(torch.load(folder / PROJECTOR_FILE, map_location="cpu", weights_only=True))
    return proj.eval()


# ---------------------------------------------------------------------------------------------- evaluation

def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def stage_eval(ctx: Ctx, arm: str, lora: Path, experts: Path | None, projector: Path | None, emb: dict,
               reasons: pd.DataFrame) -> dict:
    """p(Yes) of every test sample in one forward pass (the trained score), routed through the gate when the arm
    has experts; and a generated reason for each held-out reasoning sample."""
    name = "think" if ARMS[arm][0] else "label"
    # the held-out reasons (references and which rows get a generated reason) come from "reasons"; the soft
    # vectors and the gate read the collab embeddings; the gate's thresholds are read here (not at training)
    gate = ["experts.tau", "experts.single_margin", "experts.entropy_threshold"] if experts is not None else []
    st = ctx.run.stage(f"eval/{arm}", after=[
        *PROMPT_STAGES, "reasons", f"train/lora-{name}", *([f"train/experts-{name}"] if experts is not None else []),
        *([f"train/projector-{name}"] if projector is not None else []),
        *(["collab"] if experts is not None or projector is not None else [])], depends=config_fields(
        ctx.cfg, "model.name", "model.options", "subset.history_len", "train.score", "generate.max_new_tokens",
        "generate.temperature", "data.seed", *gate))
    if not st.done:
        import torch

        from ..llm.hf import TransformersLLM, TransformersOptions
        from ..llm.soft_tokens import ACTIVE, choice_token_ids
        from ..train.experts import GLOBAL, expert_mixture, expert_name

        cfg = ctx.cfg
        llm = TransformersLLM(cfg.model.name, TransformersOptions(**cfg.model.options))
        info = None
        llm.load_adapter(GLOBAL, lora)
        if experts is not None:
            info = json.loads((experts / "experts.json").read_text())
            for i, d in enumerate(info["experts"]):
                llm.load_adapter(expert_name(i), d)
        soft = projector is not None
        scorer = llm.with_soft_tokens(load_projector(projector) if soft else None)
        ph = scorer.placeholder
        test = ctx.splits.test
        fields = ctx.fields("test")
        vecs = ([np.stack([emb["user"][u], emb["item"][i]]) for u, i in zip(test["user_id"], test["item_id"],
                                                                              strict=True)] if soft else None)
        yes_no = choice_token_ids(llm.tokenizer, ("Yes", "No"))

        def routed(rows: list[int], call) -> tuple[list[Any], dict[str, int]]:
            """``call(indices, adapter, batch_context)`` per route group (all rows global without experts)."""
            if info is None:
                return dict(zip(rows, call(rows, GLOBAL, None), strict=True)), {"global": len(rows)}
            routes = steps.route_samples(test["user_id"].to_numpy()[rows], emb["user"], np.asarray(info["centers"]),
                                         tau=cfg.experts.tau, single_margin=cfg.experts.single_margin,
                                         entropy_threshold=cfg.experts.entropy_threshold)
            groups: dict[str, list[int]] = {}
            for r, route in zip(rows, routes, strict=True):
                groups.setdefault(route.key, []).append(r)
            names = [expert_name(i) for i in range(info["k"])]
            w_of = {r: route.weights for r, route in zip(rows, routes, strict=True)}
            out = {}
            for key, idx in groups.items():
                if key == "fused":
                    w = torch.tensor([w_of[r] for r in idx])
                    res = call(idx, ACTIVE, lambda b, w=w: expert_mixture(llm.model, names, w[b]))
                else:
                    llm.model.set_adapter(key)
                    res = call(idx, ACTIVE, None)
                out.update(zip(idx, res, strict=True))
            return out, {k: len(v) for k, v in groups.items()}

        def score(idx, adapter, bc):
            sub = [vecs[i] for i in idx] if soft else None
            lg = scorer.answer_logits([steps.rec_prompt(ctx.domain, fields[i], soft, ph) for i in idx], sub, yes_no,
                                      adapter=adapter, batch_context=bc)
            return list(_sigmoid(lg[:, 0] - lg[:, 1]) if cfg.train.score == "yes_vs_no" else _sigmoid(lg[:, 0]))

        scores, route_counts = routed(list(range(len(test))), score)
        io.write_parquet(st.path / "predictions.parquet", pd.DataFrame({
            "sample": test["sample"], "user_id": test["user_id"], "label": test["label"],
            "score": [float(scores[i]) for i in range(len(test))]}))

        held = reasons[reasons["split"] == "test"]
        rows = [int(r) for r in held["row"]]

        def gen(idx, adapter, bc):
            sub = [vecs[i] for i in idx] if soft else None
            return scorer.generate([steps.think_prompt(ctx.domain, fields[i], soft, ph) for i in idx], sub,
                                   max_new_tokens=cfg.generate.max_new_tokens, temperature=cfg.generate.temperature,
                                   seed=cfg.data.seed, adapter=adapter, batch_context=bc)

        texts = routed(rows, gen)[0] if rows else {}
        io.write_parquet(st.path / "reasons.parquet", pd.DataFrame({
            "row": rows, "reference": held["reason"].tolist(), "generated": [texts[r] for r in rows]}))
        st.complete(["predictions.parquet", "reasons.parquet"], routes=route_counts)
    return {"preds": pd.read_parquet(st.path / "predictions.parquet"),
            "reasons": pd.read_parquet(st.path / "reasons.parquet"), "routes": st.info()["routes"]}


def stage_reason_quality(ctx: Ctx, arm: str, gen: pd.DataFrame) -> dict:
    """METEOR, BLEU, ROUGE-L, BERTScore of an arm's generated reasons vs the teacher's (held-out samples)."""
    from ..eval.reasons import reason_report

    st = ctx.run.stage(f"reason_quality/{arm}", after=[f"eval/{arm}"],
                       depends=config_fields(ctx.cfg, "bertscore_encoder"))
    if not st.done:
        hyps = [steps.strip_answer(t) for t in gen["generated"]]
        rep = reason_report(hyps, gen["reference"].tolist(), ctx.cfg.bertscore_encoder)
        if rep.get("n") and rep["meteor"] is None:
            ctx.run.warn("METEOR skipped: WordNet is not available offline (apt-get install wordnet-base)")
        rep["empty_share"] = float(np.mean([not h for h in hyps])) if hyps else None
        io.write_json(st.path / "report.json", rep)
        st.complete(["report.json"])
    return json.loads((st.path / "report.json").read_text())


# ---------------------------------------------------------------------------------------------- run

def results_table(details: dict, res) -> str:
    """Tab. 2 / 4 layout: AUC, UAUC, NDCG@5, MAP@5 [95% user-bootstrap intervals], warm / cold AUC, reason quality."""
    def cell(v, m, sub="all"):
        r = next((x for x in res.rows if x.variant == v and x.metric == m and x.subgroup == sub), None)
        if r is None or r.value is None:
            return ""
        ci = "" if r.ci_low is None else f" [{r.ci_low:.3f}, {r.ci_high:.3f}]"
        return f"{r.value:.4f}{ci}"

    lines = ["| model | AUC | UAUC | NDCG@5 | MAP@5 | AUC warm | AUC cold | METEOR | BLEU | ROUGE-L | BERTScore |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for v in dict.fromkeys(r.variant for r in res.rows):
        q = details["reason_quality"].get(v, {})

        def f(k, q=q):
            return "" if q.get(k) is None else f"{q[k]:.4f}"

        label = "collm (= w/o both)" if v == "collm" and details.get("no_both_is_collm") else v
        lines.append(f"| {label} | {cell(v, 'auc')} | {cell(v, 'uauc')} | {cell(v, 'ndcg@5')} | {cell(v, 'map@5')} "
                     f"| {cell(v, 'auc', 'warm')} | {cell(v, 'auc', 'cold')} | {f('meteor')} | {f('bleu')} "
                     f"| {f('rouge_l')} | {f('bertscore')} |")
    return "\n".join(lines + ["", f"Samples: {json.dumps(details['data'])}",
                              f"Reason synthesis: {json.dumps(details['reason_synthesis'])}",
                              f"Gate routes (test samples): {json.dumps(details['routes'])}"]) + "\n"


def run(cfg: Config, run_dir: RunDir) -> dict:
    ctx = stage_samples(cfg, run_dir)
    stage_keywords(ctx)
    emb = stage_collab(ctx)
    classic = {b: stage_baseline(ctx, b) for b in cfg.baselines if b in CLASSIC}
    reasons = stage_reasons(ctx)
    arms = variants(cfg)
    loras, data, experts, projectors = {}, {}, {}, {}
    for think in sorted({ARMS[a][0] for a in arms}, reverse=True):
        data[think] = stage_data(ctx, think, reasons["table"], emb)
        loras[think] = stage_lora(ctx, think, data[think])
    for think in sorted({ARMS[a][0] for a in arms if ARMS[a][1]}, reverse=True):
        experts[think] = stage_experts(ctx, think, data[think], loras[think], emb)
    for think in sorted({ARMS[a][0] for a in arms if ARMS[a][2]}, reverse=True):
        projectors[think] = stage_projector(ctx, think, data[think], loras[think])
    evals, quality = {}, {}
    for a in arms:
        think, exp, soft = ARMS[a]
        evals[a] = stage_eval(ctx, a, loras[think], experts.get(think) if exp else None,
                              projectors.get(think) if soft else None, emb, reasons["table"])
        quality[a] = stage_reason_quality(ctx, a, evals[a]["reasons"])
    # the shared results schema: every LLM arm and classic baseline on the same test samples, warm / cold
    test = ctx.splits.test
    groups = R.user_subgroups(test, ctx.full.train, cfg.results.activity_edges)[["user_type"]]
    frames = [R.prediction_frame("thinkrec", a, 0, e["preds"]["user_id"], e["preds"]["label"], e["preds"]["score"],
                                 groups) for a, e in evals.items()]
    frames += [R.prediction_frame("thinkrec", b, 0, test["user_id"], test["label"], classic[b][0], groups)
               for b in classic]
    io.write_parquet(run_dir.root / "predictions.parquet", pd.concat(frames, ignore_index=True))
    section = cfg.results if cfg.results.reference in arms or cfg.results.reference in cfg.baselines else \
        cfg.results.model_copy(update={"reference": arms[0]})
    data_info = {"train": len(ctx.splits.train), "test": len(test), "test_users": int(test["user_id"].nunique()),
                 "cold_test_samples": int((groups["user_type"] == "cold").sum())}
    details = {"method": "thinkrec", "data": data_info, "reason_synthesis": reasons["stats"],
               "routes": {a: e["routes"] for a, e in evals.items()}, "reason_quality": quality,
               "score": cfg.train.score, "no_both_is_collm": "no_both" in cfg.ablations and "collm" in arms,
               "classic": {b: m for b, (_, m) in classic.items()}}
    # hashed as TrackRec's, so a TrackRec run on the same subset fields lands in one compare leaderboard with it
    sub = ctx.splits
    res = R.build_results(
        pd.read_parquet(run_dir.root / "predictions.parquet"), section, method="thinkrec", dataset=sub.dataset,
        protocol=sub.protocol, split_checksum=R.splits_checksum(sub),
        config=cfg.model_dump(mode="json"), packages=package_versions(), predictions="predictions.parquet",
        details=details)
    R.write_results(run_dir.root, res, R.Timings.of_run(run_dir.root))
    io.write_text(run_dir.root / "results.md", results_table(details, res) + "\n" + R.render_markdown(res))
    return {**details, "arms": arms}
