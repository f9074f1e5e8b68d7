"""STARec (CIKM'25): each user an LLM agent with a memory; fast-thinking ranking, slow-thinking reflective memory
updates, anchored reinforcement training (teacher SFT, then GRPO). The paper has no public code; its text is the
spec. Steps and where they live:

==============================  ====================================================================================
§4.1.1 agent memory             :class:`~.starec_steps.Memory`, every version in ``replay/*/memories.parquet``
§4.1.2 fast thinking (Tab. 1)   :func:`~.starec_steps.rank` (Ranking constraint where the backend enforces it)
§4.1.3 slow thinking (Tab. 2)   :func:`stage_replay` → :func:`~.starec_steps.replay` (``append`` = w/o reflection)
§4.2.1 SFT anchoring            :func:`stage_sft_data` (teacher replay → screening → "prompt error + rethink")
                                and :func:`train_sft_agent` (LoRA SFT)
§4.2.2 RL enhancement           :func:`train_grpo_agent`: GRPO with the rank reward on ranking prompts and the
                                indirect reward on memory-update prompts (the new memory ranks the follow-up list)
§5.1.2 evaluation               :func:`stage_rank`: leave-one-out, 1 positive + 19 negatives, 3 negative draws;
                                NDCG@1/5/10/20 in the shared results schema (draw = seed: value = mean over draws,
                                interval = user bootstrap of that mean), by user-activity group (§5.3.3)
§5.3.4 Best of N                :func:`stage_best_of_n` (oracle: the best of N sampled SFT rankings per list)
==============================  ====================================================================================

Variants on the same test users and negatives (Tab. 4/5): ``teacher`` (the teacher as the agent), ``sft``,
``starec`` (SFT + GRPO), ``no_reflection`` (the STARec model with append-only memories, Tab. 5 "w/o
Self-Reflection"), ``no_sft`` (GRPO from the base model, "w/o SFT Anchoring"), ``llmrank`` (the base model,
zero-shot LLMRank prompt), ``agentcf`` (the base model as user and item agents, :func:`stage_agentcf`) and the classic
baselines ``pop``, ``bpr``, ``gru4rec``, ``sasrec`` (``_full``: trained on all interactions) from
:mod:`reasonrec.rec.baselines`.

DEVIATIONS, with reasons:

- Test users' memories come from replaying their last ``replay.steps`` interactions with the evaluated agent itself
  (the paper does not say how test memories are built; this is the agent's own slow thinking, and it keeps the
  cost bounded). ``no_reflection`` is an evaluation-time ablation (same trained model, memories append only);
  the paper does not say whether it also retrained.
- GRPO rollouts are sampled by trl without the Ranking constraint (trl's generation takes no logits processor), so a
  small model's unparsable rollouts earn −1; the indirect reward ranks the follow-up list greedily with the policy
  being trained, unconstrained, through the same parser as evaluation.
- AgentCF (Zhang et al., WWW'24; no copy in ``../shared/papers``, reproduced from its description): user and item
  agents with text memories; per interaction the user agent picks between the real item and a sampled negative,
  and on a wrong pick a collaborative reflection rewrites the user memory and both item memories; ranking uses the
  user memory, recent history and the candidates' memories (AgentCF-H). NOT reproduced: its reflection on correct
  picks, multiple optimisation epochs, and the retrieval (AgentCF-R) variant; it replays the test users' last
  ``agentcf.steps`` interactions only (the paper also learns from other users' interactions), in user batches
  (item memories are updated after each batch, not in global time order).
- Classic baselines train on the protocol's sampled users (``*``) or on all interactions (``*_full``) as the
  paper's ``sample`` / ``full``; the LLM agents are trained on ``subset.train_users`` of those.
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
from ..eval import results as R
from ..llm import parsers
from ..llm.base import LLMSection
from ..llm.engine import EngineSection
from ..llm.prompts import item_fields
from ..llm.specs import task_spec
from ..progress import describe
from ..runs import RunDir, config_fields, package_versions
from . import starec_steps as steps
from .common import prepare_splits, training_stage

Variant = Literal["teacher", "sft", "starec", "no_reflection", "no_sft", "llmrank", "agentcf"]
Baseline = Literal["pop", "bpr", "bpr_full", "gru4rec", "gru4rec_full", "sasrec", "sasrec_full"]
ALL_VARIANTS = ["teacher", "sft", "starec", "no_reflection", "no_sft", "llmrank", "agentcf"]
ALL_BASELINES = ["pop", "bpr", "bpr_full", "gru4rec", "gru4rec_full", "sasrec", "sasrec_full"]
# variant → (agent, memory mode); llmrank and agentcf have their own stages
AGENTS = {"teacher": ("teacher", "reflect"), "sft": ("sft", "reflect"), "starec": ("starec", "reflect"),
          "no_reflection": ("starec", "append"), "no_sft": ("no_sft", "reflect")}
TITLES = {"teacher": "the teacher as the agent", "sft": "STARec-SFT (teacher-anchored LoRA)",
          "starec": "STARec: SFT + GRPO", "no_reflection": "w/o self-reflection (append only)",
          "no_sft": "w/o SFT anchoring (GRPO from base)", "llmrank": "LLMRank zero-shot, base model",
          "agentcf": "AgentCF, base model", "pop": "popularity", "bpr": "BPR-MF, sampled users",
          "bpr_full": "BPR-MF, all interactions", "gru4rec": "GRU4Rec, sampled users",
          "gru4rec_full": "GRU4Rec, all interactions", "sasrec": "SASRec, sampled users",
          "sasrec_full": "SASRec, all interactions"}


class SubsetSection(Section):
    """Users the LLM stages cover (seeded, from the protocol's sampled train / test users). Fields:
        train_users: users whose replay gives the SFT / GRPO data (``None`` = all the protocol's train users).
        test_users: users every variant is evaluated on (``None`` = all; each has ``data.options.n_draws`` lists).
        history_len: interactions shown in a prompt (the most recent).
    """

    train_users: int | None = Field(None, ge=1)
    test_users: int | None = Field(None, ge=2)
    history_len: int = Field(20, ge=1)


class ModelSection(Section):
    """The agent's base model (paper: Qwen2.5-7B / 1.5B / 0.5B). Fields: name; backend (``transformers``: adapters per
    call); options; max_length (prompt + completion tokens in training); lora_r, lora_alpha."""

    name: str = "smollm2-135m"
    backend: Literal["transformers"] = "transformers"
    options: dict[str, Any] = {}
    max_length: int = Field(2048, ge=64)
    lora_r: int = Field(8, ge=1)
    lora_alpha: int = Field(16, ge=1)


class ReplaySection(Section):
    """§4.1.3 replay. Fields: steps (last interactions replayed per user; earlier ones start the history);
    candidates (items per replay ranking: the real one + unseen negatives); rank_tokens (budget of a ranking
    answer, think block included); memory_tokens (of a reflection); batch_users (users advanced together; each is
    committed when its replay ends); temperature (0 = greedy; > 0 only for random-weight smoke models)."""

    steps: int = Field(3, ge=1)
    candidates: int = Field(10, ge=2)
    rank_tokens: int = Field(512, ge=16)
    memory_tokens: int = Field(256, ge=16)
    batch_users: int = Field(8, ge=1)
    temperature: float = Field(0.0, ge=0)


class SFTSection(Section):
    """§4.2.1. Fields: ndcg_threshold (screening keeps teacher rankings with NDCG@10 ≥ it); max_rethink ("prompt
    error + rethink" rounds per flawed sample); rethink_temperature; epochs (paper 3), learning_rate (paper 1e-4 for
    0.5B/1.5B, 1e-5 for 7B), batch_size, save_steps."""

    ndcg_threshold: float = Field(0.5, ge=0, le=1)
    max_rethink: int = Field(2, ge=0)
    rethink_temperature: float = Field(0.7, ge=0)
    epochs: float = Field(3.0, gt=0)
    learning_rate: float = Field(1e-4, gt=0)
    batch_size: int = Field(4, ge=1)
    save_steps: int = Field(50, ge=1)


class GRPOSection(Section):
    """§4.2.2 / §5.1.4. Fields: num_generations (paper 8), beta (KL, paper 1e-3), learning_rate (paper 1e-6),
    epochs (paper 1), max_steps (cap, ``None`` = the epochs), max_completion_length, temperature of the rollouts,
    memory_reward (train on the memory-update prompts with the indirect reward too), followup_tokens (budget of
    the follow-up ranking that reward runs), save_steps; constrained (rollouts and the follow-up ranking decode
    under the evaluation's constraints — the ranking a permutation of the candidates, the memory update in its
    format: unconstrained, the bundled model never named the target in 48 rollouts of the CPU study, so every
    reward was −1 and GRPO had no advantage to follow)."""

    num_generations: int = Field(8, ge=2)
    beta: float = Field(1e-3, ge=0)
    learning_rate: float = Field(1e-6, gt=0)
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, ge=1)
    max_completion_length: int = Field(512, ge=8)
    temperature: float = Field(1.0, gt=0)
    memory_reward: bool = True
    followup_tokens: int = Field(256, ge=8)
    save_steps: int = Field(50, ge=1)
    constrained: bool = True


class EvalSection(Section):
    """Fields: rank_tokens (budget of a test ranking); batch_size (test lists per generate call); best_of_n (N of
    §5.3.4 for the SFT model, 0 = off); best_of_temperature (paper 1.0)."""

    rank_tokens: int = Field(512, ge=16)
    batch_size: int = Field(8, ge=1)
    best_of_n: int = Field(5, ge=0)
    best_of_temperature: float = Field(1.0, gt=0)


class AgentCFSection(Section):
    """AgentCF baseline. Fields: steps (interactions of each test user replayed), choice / reflect tokens."""

    steps: int = Field(3, ge=1)
    reflect_tokens: int = Field(160, ge=16)


class Config(Section):
    """A STARec experiment (``method: starec``); see ``configs/starec/``. ``variants`` and ``baselines`` name the
    table's rows (all by default); ``baseline`` holds :class:`~reasonrec.rec.baselines.BaselineConfig` fields;
    ``results``: the shared schema, every row compared (paired user bootstrap) with ``starec`` by default."""

    method: Literal["starec"] = "starec"
    run_dir: Path
    engine: EngineSection = Field(default_factory=EngineSection)  # where LLM calls run (llm/engine.py)
    data: DataSection = Field(default_factory=lambda: DataSection(protocol="starec"))
    subset: SubsetSection = Field(default_factory=SubsetSection)
    model: ModelSection = Field(default_factory=ModelSection)
    teacher: LLMSection = Field(default_factory=LLMSection)
    replay: ReplaySection = Field(default_factory=ReplaySection)
    sft: SFTSection = Field(default_factory=SFTSection)
    grpo: GRPOSection = Field(default_factory=GRPOSection)
    eval: EvalSection = Field(default_factory=EvalSection)
    agentcf: AgentCFSection = Field(default_factory=AgentCFSection)
    variants: list[Variant] = Field(default_factory=lambda: list(ALL_VARIANTS))
    baselines: list[Baseline] = Field(default_factory=lambda: list(ALL_BASELINES))
    baseline: dict[str, Any] = Field(default_factory=dict)
    results: R.ResultsSection = Field(default_factory=lambda: R.ResultsSection(
        reference="starec", metrics=["ndcg@1", "ndcg@5", "ndcg@10", "ndcg@20"]))


def check(cfg: Config, checker) -> None:
    """Every name the config gives, resolved before any stage runs (``reasonrec run --dry-run``)."""
    checker.data("data", cfg.data)
    checker.llm("teacher.name", cfg.teacher.name, cfg.teacher.backend, cfg.teacher.options)
    checker.llm("model.name", cfg.model.name, cfg.model.backend, cfg.model.options, trainable=True)


# ---------------------------------------------------------------------------------------------- context


@dataclasses.dataclass
class Ctx:
    """The run's users (prompt fields), the agent LLM (base + adapters by name) and the teacher."""

    cfg: Config
    run: RunDir
    kctx: Any
    train: pd.DataFrame      # one row per LLM train user (its protocol list)
    test: pd.DataFrame       # one row per (test user, draw)
    adapters: dict[str, Path] = dataclasses.field(default_factory=dict)
    _llm: Any = None
    _teacher: Any = None
    _loaded: set[str] = dataclasses.field(default_factory=set)

    @property
    def domain(self) -> str:
        return self.kctx.domain

    def llm(self):
        if self._llm is None:
            from ..llm.base import load_llm

            m = self.cfg.model
            self._llm = load_llm(m.name, backend=m.backend, cache=self.run.root / "llm_cache.sqlite", **m.options)
            self._loaded = set()
        return self._llm

    def teacher(self):
        t = self.cfg.teacher
        if teacher_is_model(self.cfg):
            return self.llm()   # same model: one copy in memory (its cache rows are the same either way)
        if self._teacher is None:
            from ..llm.base import load_llm

            self._teacher = load_llm(t.name, backend=t.backend, cache=t.cache or self.run.root / "llm_cache.sqlite",
                                     **t.options)
        return self._teacher

    def agent(self, name: str):
        """(llm, adapter) of an agent: ``teacher``, ``base`` or a trained adapter's name."""
        if name == "teacher":
            return self.teacher(), None
        llm = self.llm()
        if name == "base":
            return llm, None
        if name not in self._loaded:
            llm.load_adapter(name, self.adapters[name])
            self._loaded.add(name)
        return llm, name

    def release(self) -> None:
        self._llm, self._teacher, self._loaded = None, None, set()
        gc.collect()

    def user_fields(self, row: dict) -> dict:
        from ..llm.prompts import sample_fields

        return sample_fields(row, self.kctx._items, self.kctx._users, like_threshold=self.kctx.like_threshold)


# ---------------------------------------------------------------------------------------------- fingerprints
# Every producing stage names the config fields it reads and the stages whose artifacts it reads (runs.py), so a
# changed key recomputes exactly the stages that read it and everything downstream. Each training is a stage
# (``train/<agent>``, the trainer's output_dir) whose adapter checksum the stages calling that agent see. Batch
# sizes of inference (``replay.batch_users`` outside AgentCF, ``eval.batch_size``) are not inputs: every call is
# per prompt and cached by prompt.

def teacher_is_model(cfg: Config) -> bool:
    """The teacher is the agent's base model (one copy in memory, loaded with the model's options)."""
    t, m = cfg.teacher, cfg.model
    return t.name == m.name and t.backend in ("auto", m.backend) and not t.options and t.cache is None


def _agent_reads(cfg: Config, agent: str) -> dict[str, Any]:
    """The served model of an agent: the teacher's fields (and the model's when it is the base model), or the base
    model's for the base model and every trained adapter."""
    model = config_fields(cfg, "model.name", "model.backend", "model.options")
    if agent != "teacher":
        return model
    return {**config_fields(cfg, "teacher.name", "teacher.backend", "teacher.options"),
            **(model if teacher_is_model(cfg) else {})}


def _agent_stages(agent: str) -> list[str]:
    """The training stage of a trained agent (none for the teacher and the base model)."""
    return [] if agent in ("teacher", "base") else [f"train/{agent}"]


def _train_reads(cfg: Config, section: str, *fields: str) -> dict[str, Any]:
    """What a LoRA training reads: the base model, its LoRA shape, the seed and its section's fields."""
    return {**config_fields(cfg, "model.name", "model.max_length", "model.lora_r", "model.lora_alpha", "data.seed"),
            **config_fields(cfg, *(f"{section}.{f}" for f in fields))}


def stage_samples(cfg: Config, run: RunDir) -> Ctx:
    """The starec protocol's lists (→ seeded subsets of its train and test users)."""
    kctx = prepare_splits(cfg.data, run)
    st = run.stage("samples", after=["data"], depends=config_fields(
        cfg, "subset.train_users", "subset.test_users", "data.seed"))
    s = cfg.subset
    if not st.done:
        rng = np.random.default_rng(cfg.data.seed)
        parts = {}
        for name, df, n in (("train", kctx.splits.train, s.train_users), ("test", kctx.splits.test, s.test_users)):
            users = np.unique(df["user_id"].to_numpy())
            if n is not None and n > len(users):
                raise DataError(f"subset.{name}_users = {n} but the starec protocol sampled {len(users)} {name} "
                                f"users; lower it or raise data.options.n_{name}_users")
            keep = np.sort(rng.choice(users, size=n, replace=False)) if n is not None else users
            part = df[df["user_id"].isin(keep)].sort_values(["user_id", "draw"], kind="stable")
            parts[name] = part.reset_index(drop=True)
            io.write_parquet(st.path / f"{name}.parquet", parts[name])
        st.complete(["train.parquet", "test.parquet"], train_users=int(parts["train"]["user_id"].nunique()),
                    test_users=int(parts["test"]["user_id"].nunique()))
    train, test = (pd.read_parquet(st.path / f"{n}.parquet") for n in ("train", "test"))
    return Ctx(cfg, run, kctx, train, test)


# ---------------------------------------------------------------------------------------------- replay


def progress(it, desc: str):
    """A bar naming the stage and the work (``reasonrec.progress``)."""
    from tqdm.auto import tqdm

    return tqdm(it, desc=describe(desc), leave=False)


def _seen(ctx: Ctx) -> dict[int, set[int]]:
    ev = ctx.kctx.tables.interactions
    return {int(u): set(g.tolist()) for u, g in ev.groupby("user_id")["item_id"]}


def _item(ctx: Ctx, iid: int, rating=None, liked=None) -> dict:
    f = item_fields(ctx.kctx._items.get(int(iid), {}))
    f["item_id"] = int(iid)
    if rating is not None:
        f["rating"] = int(rating) if float(rating).is_integer() else float(rating)
        f["liked"] = bool(liked)
    return f


def replay_cases(ctx: Ctx, split: str, n_steps: int, with_target: bool) -> list[steps.ReplayCase]:
    """One case per user: the history before its last ``n_steps`` interactions starts the memory; each replayed
    interaction is ranked among ``replay.candidates`` − 1 unseen items (seeded per user); ``with_target`` adds
    the user's protocol list (its held-out positive among 19 negatives) as the last step (train users: the SFT /
    GRPO ranking sample of §4.2)."""
    df = ctx.train if split == "train" else ctx.test
    df = df.drop_duplicates("user_id", keep="first")
    pool = np.unique(ctx.kctx.tables.interactions["item_id"].to_numpy())
    seen = _seen(ctx)
    cases = []
    for row in df.to_dict("records"):
        u = int(row["user_id"])
        rng = np.random.default_rng([ctx.cfg.data.seed, u])
        fields = ctx.user_fields(row)
        hist = [dict(h, item_id=int(i)) for h, i in zip(fields["history"], row["hist_item_ids"], strict=True)]
        k = min(n_steps, max(0, len(hist) - 1))
        start, walk = hist[:len(hist) - k], hist[len(hist) - k:]
        allowed = np.setdiff1d(pool, np.fromiter(seen.get(u, ()), dtype=np.int64))
        case_steps = []
        for h in walk:
            negs = rng.choice(allowed, size=ctx.cfg.replay.candidates - 1, replace=False)
            ids = rng.permutation(np.concatenate([[h["item_id"]], negs]))
            case_steps.append({"item": h, "cands": [_item(ctx, i) for i in ids],
                               "pos": int(np.flatnonzero(ids == h["item_id"])[0])})
        if with_target:
            ids = [int(c) for c in row["candidate_ids"]]
            case_steps.append({"item": _item(ctx, row["item_id"], row["rating"], row["label"]),
                               "cands": [_item(ctx, i) for i in ids], "pos": ids.index(int(row["item_id"]))})
        mem = steps.Memory(u, fields["user"], "", start)
        cases.append(steps.ReplayCase(mem, case_steps))
    return cases


def stage_replay(ctx: Ctx, agent: str, mode: str, split: str) -> dict[int, dict]:
    """§4.1.3 slow thinking of ``agent`` over the ``split`` users (``mode``: ``reflect`` or ``append``). Resumable:
    each user's versions and samples are committed (one fsynced line) when its replay ends; a resumed run skips
    committed users and re-asks the cache for the rest. Returns user → record."""
    cfg = ctx.cfg
    # the users' lists ("samples") and their histories, items and seen sets (the tables: "data" stands for them)
    st = ctx.run.stage(f"replay/{agent}-{mode}/{split}", after=["data", "samples", *_agent_stages(agent)], depends={
        **_agent_reads(cfg, agent), **config_fields(
            cfg, "replay.steps", "replay.candidates", "replay.rank_tokens", "replay.memory_tokens",
            "replay.temperature", "subset.history_len", "data.seed")})
    store = steps.MemoryStore(st.path / "memories.jsonl")
    if not st.done:
        rp = cfg.replay
        cases = [c for c in replay_cases(ctx, split, rp.steps, with_target=split == "train")
                 if c.memory.user_id not in store.users]
        llm, adapter = ctx.agent(agent)
        stats, rstats = steps.RankStats(), parsers.ParseStats()
        for b in progress(range(0, len(cases), rp.batch_users), desc=f"replay {agent}-{mode} {split}"):
            batch = cases[b:b + rp.batch_users]
            out = steps.replay(llm, ctx.domain, batch, reflect=mode == "reflect", adapter=adapter,
                               history_len=cfg.subset.history_len, rank_tokens=rp.rank_tokens,
                               memory_tokens=rp.memory_tokens, seed=cfg.data.seed, temperature=rp.temperature,
                               stats=stats, reflect_stats=rstats)
            for r in out:
                store.commit({"user_id": r.memory.user_id, "versions": r.versions,
                              "memory": dataclasses.asdict(r.memory), "rank_samples": r.rank_samples,
                              "memory_samples": r.memory_samples})
        io.write_parquet(st.path / "memories.parquet", pd.DataFrame(store.rows()))
        reflections = sum(v["cause"] == "reflect" for rec in store.users.values() for v in rec["versions"])
        if mode == "reflect" and rstats.failures:
            ctx.run.warn(f"replay {agent} {split}: {rstats.failures} of {rstats.total} reflections had no "
                         f"'Updated User description:'; those memories kept their old description",
                         stage=st.name)
        st.complete(["memories.jsonl", "memories.parquet"], rank=stats.as_dict(), reflect=rstats.as_dict(),
                    reflections=int(reflections))
    return store.users


def final_memory(rec: dict) -> steps.Memory:
    m = rec["memory"]
    return steps.Memory(int(m["user_id"]), m["user"], m["description"], list(m["history"]), int(m["version"]))


# ---------------------------------------------------------------------------------------------- evaluation


def _test_lists(ctx: Ctx) -> list[dict]:
    """Every test row's candidates (item fields), positive position, user and draw."""
    out = []
    for row in ctx.test.to_dict("records"):
        ids = [int(c) for c in row["candidate_ids"]]
        out.append({"user_id": int(row["user_id"]), "draw": int(row["draw"]), "ids": ids,
                    "cands": [_item(ctx, i) for i in ids], "pos": ids.index(int(row["item_id"])), "row": row})
    return out


def _save_rankings(st, lists, outs: list[steps.RankOut], stats: steps.RankStats, **info) -> None:
    io.write_parquet(st.path / "rankings.parquet", pd.DataFrame({
        "user_id": [x["user_id"] for x in lists], "draw": [x["draw"] for x in lists],
        "order": [o.order for o in outs], "ok": [o.ok for o in outs], "named": [o.named for o in outs],
        "rank": [steps.position_of(o.order, x["pos"]) for o, x in zip(outs, lists, strict=True)],
        "text": [o.text for o in outs]}))
    st.complete(["rankings.parquet"], rank=stats.as_dict(), **info)


def _rank_batches(ctx: Ctx, llm, adapter, prompts, lists, desc: str, n: int = 1, temperature: float = 0.0,
                  stats: steps.RankStats | None = None) -> list[list[steps.RankOut]]:
    bs, out = ctx.cfg.eval.batch_size, []
    for b in progress(range(0, len(prompts), bs), desc=desc):
        out += steps.rank(llm, prompts[b:b + bs], [x["cands"] for x in lists[b:b + bs]], adapter=adapter,
                          max_new_tokens=ctx.cfg.eval.rank_tokens, temperature=temperature, n=n,
                          seed=ctx.cfg.data.seed, stats=stats)
    return out


def _memory_rank_stage(ctx: Ctx, name: str, agent: str, mode: str, *fields: str) -> tuple[Any, dict[int, dict]]:
    """Stage ``name``: ``agent`` ranks every test list from its users' memories after their ``mode`` test replay
    (run first: its memories are this stage's input); ``fields``: what it reads besides a ranking's."""
    replayed = stage_replay(ctx, agent, mode, "test")
    st = ctx.run.stage(name, after=["data", "samples", f"replay/{agent}-{mode}/test", *_agent_stages(agent)],
                       depends={**_agent_reads(ctx.cfg, agent), **config_fields(
                           ctx.cfg, "eval.rank_tokens", "subset.history_len", "data.seed", *fields)})
    return st, replayed


def _memory_prompts(ctx: Ctx, replayed: dict[int, dict], lists: list[dict]) -> list:
    mems = {u: final_memory(r) for u, r in replayed.items()}
    return [steps.rank_prompt(ctx.domain, mems[x["user_id"]].fields(ctx.cfg.subset.history_len), x["cands"])
            for x in lists]


def stage_rank(ctx: Ctx, agent: str, mode: str) -> pd.DataFrame:
    """§4.1.2 fast thinking of ``agent`` on every test list, from the user's memory after its replay."""
    st, replayed = _memory_rank_stage(ctx, f"rank/{agent}-{mode}", agent, mode)
    if not st.done:
        lists = _test_lists(ctx)
        prompts = _memory_prompts(ctx, replayed, lists)
        llm, adapter = ctx.agent(agent)
        stats = steps.RankStats()
        outs = [o[0] for o in _rank_batches(ctx, llm, adapter, prompts, lists, f"rank {agent}-{mode}", stats=stats)]
        _warn_parse(ctx, st.name, stats)
        _save_rankings(st, lists, outs, stats)
    return pd.read_parquet(st.path / "rankings.parquet")


def _warn_parse(ctx: Ctx, stage: str, stats: steps.RankStats) -> None:
    if stats.unparsed:
        ctx.run.warn(f"{stats.unparsed} of {stats.answers} rankings named no candidate; they keep the given "
                     f"(random) order", stage=stage)
    if stats.duplicates or stats.missing:
        ctx.run.log(f"{stage}: {stats.duplicates} duplicate lines dropped, {stats.missing} missing candidates "
                    f"appended in their given order")


def stage_best_of_n(ctx: Ctx, agent: str) -> pd.DataFrame:
    """§5.3.4: N rankings per test list sampled at ``eval.best_of_temperature``; the list keeps the one whose
    positive ranks best (an oracle: it reads the label, as the paper's metric does)."""
    e = ctx.cfg.eval
    st, replayed = _memory_rank_stage(ctx, f"best_of_{e.best_of_n}/{agent}", agent, "reflect",
                                      "eval.best_of_temperature")
    if not st.done:
        lists = _test_lists(ctx)
        prompts = _memory_prompts(ctx, replayed, lists)
        llm, adapter = ctx.agent(agent)
        stats = steps.RankStats()
        outs = _rank_batches(ctx, llm, adapter, prompts, lists, f"best of {e.best_of_n} {agent}", n=e.best_of_n,
                             temperature=e.best_of_temperature, stats=stats)
        best = [min(o, key=lambda r, x=x: steps.position_of(r.order, x["pos"])) for o, x in zip(outs, lists,
                                                                                             strict=True)]
        _save_rankings(st, lists, best, stats, n=e.best_of_n)
    return pd.read_parquet(st.path / "rankings.parquet")


def stage_llmrank(ctx: Ctx) -> pd.DataFrame:
    """LLMRank (Hou et al., ECIR'24): the base model ranks from the history alone, zero-shot."""
    st = ctx.run.stage("rank/llmrank", after=["data", "samples"], depends={
        **_agent_reads(ctx.cfg, "base"), **config_fields(ctx.cfg, "eval.rank_tokens", "subset.history_len",
                                                         "data.seed")})
    if not st.done:
        lists = _test_lists(ctx)
        prompts = [steps.llmrank_prompt(ctx.user_fields(x["row"])["history"][-ctx.cfg.subset.history_len:],
                                        x["cands"]) for x in lists]
        llm, adapter = ctx.agent("base")
        stats = steps.RankStats()
        outs = [o[0] for o in _rank_batches(ctx, llm, adapter, prompts, lists, "rank llmrank", stats=stats)]
        _warn_parse(ctx, st.name, stats)
        _save_rankings(st, lists, outs, stats)
    return pd.read_parquet(st.path / "rankings.parquet")


def stage_agentcf(ctx: Ctx) -> pd.DataFrame:
    """AgentCF (module docstring): user and item agents' memories from the test users' last interactions, then the
    user agent ranks each test list. Resumable through the LLM cache (every call is greedy and cached, so a re-run
    rebuilds the same memories without new generations)."""
    # the replayed steps' negatives come from replay.candidates; item memories are updated per replay.batch_users
    st = ctx.run.stage("rank/agentcf", after=["data", "samples"], depends={
        **_agent_reads(ctx.cfg, "base"), **config_fields(
            ctx.cfg, "agentcf.steps", "agentcf.reflect_tokens", "replay.candidates", "replay.batch_users",
            "eval.rank_tokens", "subset.history_len", "data.seed")})
    if not st.done:
        a, hl = ctx.cfg.agentcf, ctx.cfg.subset.history_len
        llm, adapter = ctx.agent("base")
        cases = replay_cases(ctx, "test", a.steps, with_target=False)
        users = {c.memory.user_id: "I enjoy movies." for c in cases}
        items: dict[int, str] = {}

        def imem(f: dict) -> str:
            return items.get(f["item_id"], f"A movie: {steps._item_text(f)}.")

        spec, choice_stats, refl_stats = steps.agentcf_reflect_spec(a.reflect_tokens), parsers.ParseStats(), \
            parsers.ParseStats()
        constraint = spec.constraint if "constraint:regex" in llm.supports else None
        bs = ctx.cfg.replay.batch_users
        for b in progress(range(0, len(cases), bs), desc="agentcf memories"):
            batch = cases[b:b + bs]
            for t in range(max(len(c.steps) for c in batch)):
                live = [c for c in batch if t < len(c.steps)]
                pairs = []
                for c in live:
                    s = c.steps[t]
                    neg = s["cands"][(s["pos"] + 1) % len(s["cands"])]   # a sampled unseen item
                    flip = (c.memory.user_id + t) % 2 == 1               # the real item is A or B, alternately
                    pairs.append((c, s["item"], neg, flip))
                prompts = [steps.agentcf_choice_prompt(users[c.memory.user_id], *((n, p) if f else (p, n)),
                                                       *((imem(n), imem(p)) if f else (imem(p), imem(n))))
                           for c, p, n, f in pairs]
                picks = parsers.generate_parsed(llm, prompts, steps.parse_choice, max_attempts=1, adapter=adapter,
                                                max_new_tokens=2, constraint=steps.choice_constraint(llm),
                                                stats=choice_stats)
                wrong = [(c, p, n) for (c, p, n, f), g in zip(pairs, picks, strict=True)
                         if not g.ok or (g.value == "A") == f]
                if not wrong:
                    continue
                rprompts = [steps.agentcf_reflect_prompt(users[c.memory.user_id], p, n, imem(p), imem(n), True)
                            for c, p, n in wrong]
                got = parsers.generate_parsed(llm, rprompts, steps.parse_agentcf_reflection, max_attempts=1,
                                              adapter=adapter, max_new_tokens=a.reflect_tokens, constraint=constraint,
                                              stats=refl_stats)
                for (c, p, n), g in zip(wrong, got, strict=True):
                    if g.ok:
                        users[c.memory.user_id], items[p["item_id"]], items[n["item_id"]] = g.value
        io.write_json(st.path / "memories.json", {"users": {str(k): v for k, v in users.items()},
                                                  "items": {str(k): v for k, v in items.items()}})
        lists = _test_lists(ctx)
        prompts = [steps.agentcf_rank_prompt(users[x["user_id"]], ctx.user_fields(x["row"])["history"][-min(hl, 10):],
                                             x["cands"], [imem(c) for c in x["cands"]]) for x in lists]
        stats = steps.RankStats()
        outs = [o[0] for o in _rank_batches(ctx, llm, adapter, prompts, lists, "rank agentcf", stats=stats)]
        _warn_parse(ctx, st.name, stats)
        _save_rankings(st, lists, outs, stats, choice=choice_stats.as_dict(), reflect=refl_stats.as_dict())
    return pd.read_parquet(st.path / "rankings.parquet")


def stage_baseline(ctx: Ctx, name: str) -> pd.DataFrame:
    """A classic baseline trained on the protocol's samples (``_full``: all interactions), scoring the test lists."""
    from ..rec.baselines import BaselineConfig, eval_set, train_baseline

    st = ctx.run.stage(f"baseline/{name}", after=["data", "samples"],
                       depends=config_fields(ctx.cfg, "baseline", "data.seed"))
    if not st.done:
        cfg = BaselineConfig(**{"seed": ctx.cfg.data.seed, **ctx.cfg.baseline})
        metrics, rec = train_baseline(name, ctx.kctx.splits, ctx.kctx.tables, cfg, return_model=True)
        ev = eval_set(ctx.test, cfg.max_len)
        scores = rec.score_candidates(ev.user_ids, ev.hist, ev.candidates)
        io.write_parquet(st.path / "scores.parquet", pd.DataFrame({
            "user_id": ctx.test["user_id"].to_numpy(), "draw": ctx.test["draw"].to_numpy(),
            "scores": [np.asarray(s, dtype=np.float64) for s in scores]}))
        st.complete(["scores.parquet"], protocol_metrics=metrics)
    return pd.read_parquet(st.path / "scores.parquet")


# ---------------------------------------------------------------------------------------------- training


def _sys_user(chat: list[dict]) -> tuple[str | None, str]:
    system = next((m["content"] for m in chat if m["role"] == "system"), None)
    return system, next(m["content"] for m in chat if m["role"] == "user")


def stage_sft_data(ctx: Ctx) -> dict:
    """§4.2.1: the teacher's replay of the train users (rankings with CoT, reflections) → screening → up to
    ``sft.max_rethink`` "prompt error + rethink" rounds for the rejected ones → ``sft.parquet``."""
    recs = stage_replay(ctx, "teacher", "reflect", "train")
    st = ctx.run.stage("sft_data", after=["replay/teacher-reflect/train"], depends={
        **_agent_reads(ctx.cfg, "teacher"), **config_fields(
            ctx.cfg, "sft.ndcg_threshold", "sft.max_rethink", "sft.rethink_temperature", "replay.rank_tokens",
            "replay.memory_tokens", "data.seed")})
    if st.done:
        return st.info()
    s, cfg = ctx.cfg.sft, ctx.cfg
    cands: list[dict] = []
    for rec in recs.values():
        for r in rec["rank_samples"]:
            cands.append({"kind": "rank", "prompt": r["prompt"], "text": r["completion"], "cands": r["candidates"],
                          "pos": r["target_pos"]})
        for m in rec["memory_samples"]:
            cands.append({"kind": "memory", "prompt": m["prompt"], "text": m["completion"]})

    def verdict(c: dict) -> str | None:
        if c["kind"] == "rank":
            return steps.screen(c["text"], c["cands"], c["pos"], s.ndcg_threshold)
        return steps.screen_memory(c["text"])

    first = [verdict(c) for c in cands]
    reasons = {k: first.count(k) for k in (*steps.SCREEN_REASONS, "no_preference") if first.count(k)}
    status = list(first)
    teacher = ctx.teacher()
    for attempt in range(s.max_rethink):
        todo = [i for i, v in enumerate(status) if v is not None]
        if not todo:
            break
        prompts = [steps.augment_prompt(cands[i]["prompt"], cands[i]["text"], status[i],
                                        steps.answer_rank(cands[i]["text"], cands[i]["cands"], cands[i]["pos"])
                                        if cands[i]["kind"] == "rank" else None) for i in todo]
        budget = [cfg.replay.rank_tokens if cands[i]["kind"] == "rank" else cfg.replay.memory_tokens for i in todo]
        gens = []
        for kind_budget in sorted(set(budget)):   # one call per token budget
            idx = [j for j, b in enumerate(budget) if b == kind_budget]
            outs = teacher.generate([prompts[j] for j in idx], temperature=s.rethink_temperature,
                                    max_new_tokens=kind_budget, seed=cfg.data.seed + 100 + attempt)
            gens += list(zip(idx, outs, strict=True))
        for j, g in gens:
            i = todo[j]
            cands[i]["text"] = g.texts[0]
            status[i] = verdict(cands[i])
    kept = [c for c, v in zip(cands, status, strict=True) if v is None]
    rows = []
    for c in kept:
        system, user = _sys_user(c["prompt"])
        rows.append({"system": system or "", "prompt": user, "completion": c["text"], "kind": c["kind"]})
    if not rows:
        ctx.run.warn("SFT anchoring: screening kept no teacher sample (even after rethinking); the SFT model is "
                     "trained on the unscreened rankings instead", stage=st.name)
        for c in cands:
            if c["kind"] == "rank":
                system, user = _sys_user(c["prompt"])
                rows.append({"system": system or "", "prompt": user, "completion": c["text"], "kind": "rank"})
    io.write_parquet(st.path / "sft.parquet", pd.DataFrame(rows))
    info = {"candidates": len(cands), "kept_first_pass": first.count(None), "kept": len(kept),
            "rejected_first_pass": reasons, "rethink_rounds": s.max_rethink, "trained_on": len(rows)}
    st.complete(["sft.parquet"], **info)
    return info


def _lora(ctx: Ctx, name: str, init: str | None, data: Path, lr: float, epochs: float, batch: int, save: int) -> dict:
    m = ctx.cfg.model
    return {"model": {"name": m.name, "init_adapter": None if init is None else ctx.adapters[init],
                      "lora": {"r": m.lora_r, "alpha": m.lora_alpha, "targets": "all-linear"}},
            "data": {"train": data},
            "training": {"output_dir": ctx.run.root / "train" / name, "seed": ctx.cfg.data.seed,
                         "learning_rate": lr, "num_train_epochs": epochs, "per_device_train_batch_size": batch,
                         "max_length": m.max_length, "logging_steps": 1, "save_steps": save}}


def train_sft_agent(ctx: Ctx) -> str:
    from ..train.config import SFTConfig
    from ..train.sft import train_sft

    stage_sft_data(ctx)
    st = training_stage(ctx.run, "sft", after=["sft_data"], depends=_train_reads(
        ctx.cfg, "sft", "learning_rate", "epochs", "batch_size"))
    if not st.done:
        ctx.release()
        s = ctx.cfg.sft
        cfg = SFTConfig.model_validate({**_lora(ctx, "sft", None, ctx.run.stage("sft_data").path / "sft.parquet",
                                                s.learning_rate, s.epochs, s.batch_size, s.save_steps),
                                        "system_column": "system"})
        st.complete(["adapter", "train_log.json"], skipped=train_sft(cfg).skipped)
    ctx.adapters["sft"] = st.path / "adapter"
    return "sft"


def stage_grpo_data(ctx: Ctx) -> Path:
    """§4.2.2 prompts: every ranking of the teacher's train-user replay (target + candidate titles) and, with
    ``grpo.memory_reward``, every reflection prompt with its follow-up list."""
    recs = stage_replay(ctx, "teacher", "reflect", "train")
    st = ctx.run.stage("grpo_data", after=["replay/teacher-reflect/train"],
                       depends=config_fields(ctx.cfg, "grpo.memory_reward"))
    if not st.done:
        rows = []
        for rec in recs.values():
            for r in rec["rank_samples"]:
                system, user = _sys_user(r["prompt"])
                rows.append({"task": "rank", "system": system or "", "prompt": user,
                             "target_title": r["candidates"][r["target_pos"]], "candidates": r["candidates"],
                             "followup": ""})
            if ctx.cfg.grpo.memory_reward:
                for m in rec["memory_samples"]:
                    if m["followup"] is None:
                        continue
                    system, user = _sys_user(m["prompt"])
                    f = m["followup"]
                    titles = [c["title"] for c in f["candidates"]]
                    rows.append({"task": "memory", "system": system or "", "prompt": user,
                                 "target_title": titles[f["target_pos"]], "candidates": titles,
                                 "followup": json.dumps(f)})
        io.write_parquet(st.path / "grpo.parquet", pd.DataFrame(rows))
        st.complete(["grpo.parquet"], rank=sum(r["task"] == "rank" for r in rows),
                    memory=sum(r["task"] == "memory" for r in rows))
    return st.path / "grpo.parquet"


def _policy_ranker(ctx: Ctx, holder: dict, tokenizer):
    """The indirect reward's follow-up ranking: the policy being trained, greedy, reads the new memory."""
    import torch

    from ..train.grpo import target_rank

    g = ctx.cfg.grpo

    def rank_with_memory(memory: str, row: dict) -> int | None:
        try:
            new = parsers.parse_memory(memory)
        except parsers.ParseError:
            return None   # no "Updated User description:": no memory to rank with
        f = json.loads(row["followup"])
        chat = steps.rank_prompt(ctx.domain, {"user": f["user"], "memory": new, "history": f["history"]},
                                 f["candidates"])
        ids = tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        model = holder["trainer"].accelerator.unwrap_model(holder["trainer"].model)
        extra = {}
        cons = steps.rank_constraint(f["candidates"], g.followup_tokens) if g.constrained else None
        if cons is not None:
            from transformers import LogitsProcessorList

            from ..llm.hf import ConstraintProcessor, grammar_session_for

            if "grammars" not in holder:   # setdefault would compile the vocabulary on every call
                holder["grammars"] = grammar_session_for(model, tokenizer)
            proc = ConstraintProcessor.for_constraints(holder["grammars"], [cons], g.followup_tokens)
            extra["logits_processor"] = LogitsProcessorList([proc])
        with torch.no_grad():
            out = model.generate(**{k: v.to(model.device) for k, v in ids.items()}, max_new_tokens=g.followup_tokens,
                                 do_sample=False, pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
                                 **extra)
        text = tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
        return target_rank(text, row["target_title"], row["candidates"])

    return rank_with_memory


def _rollout_constraint(g: GRPOSection):
    """A GRPO rollout's constraint from its dataset row: the evaluation's ranking constraint over the row's
    candidates, or the memory-update format."""
    memory = task_spec("starec_memory", max_new_tokens=g.max_completion_length).constraint

    def constraint_for(row: dict):
        if row.get("task") == "memory":
            return memory
        return steps.rank_constraint([{"title": t} for t in row["candidates"]], g.max_completion_length)

    return constraint_for


def train_grpo_agent(ctx: Ctx, name: str, init: str | None) -> str:
    """GRPO (trl) from ``init`` (``sft``, or None = the base model: w/o SFT anchoring)."""
    from ..train.common import is_complete, run_training
    from ..train.config import GRPOConfig
    from ..train.grpo import build_grpo_trainer, make_rank_reward, memory_update_reward

    data = stage_grpo_data(ctx)
    # save_steps is the checkpoint cadence, memory_reward decides grpo_data's rows: neither changes a trained policy
    st = training_stage(ctx.run, name, after=["grpo_data", *([] if init is None else _agent_stages(init))],
                        depends=_train_reads(ctx.cfg, "grpo", "num_generations", "beta", "learning_rate", "epochs",
                                             "max_steps", "max_completion_length", "temperature", "followup_tokens",
                                             "constrained"))
    ctx.adapters[name] = st.path / "adapter"
    if st.done:
        return name
    ctx.release()
    g = ctx.cfg.grpo
    base = _lora(ctx, name, init, data, g.learning_rate, g.epochs, g.num_generations, g.save_steps)
    base["training"].update(max_steps=g.max_steps or -1)
    cfg = GRPOConfig.model_validate({**base, "num_generations": g.num_generations, "beta": g.beta,
                                     "max_completion_length": g.max_completion_length, "temperature": g.temperature,
                                     "system_column": "system"})
    if is_complete(cfg.training.output_dir):   # trained, killed before its stage was marked complete
        st.complete(["adapter", "train_log.json"], skipped=True)
        return name
    holder: dict = {}
    rewards = [make_rank_reward("target_title", "candidates")]
    df = pd.read_parquet(data)
    if (df["task"] == "memory").any():
        from ..train.common import load_tokenizer

        rewards.append(memory_update_reward(_policy_ranker(ctx, holder, load_tokenizer(ctx.cfg.model.name))))
    df["candidates"] = df["candidates"].map(list)
    trainer, tokenizer = build_grpo_trainer(cfg, df, rewards,
                                            constraint_for=_rollout_constraint(g) if g.constrained else None)
    holder["trainer"] = trainer
    run_training(trainer, cfg, tokenizer=tokenizer)
    st.complete(["adapter", "train_log.json"], skipped=False)
    return name


# ---------------------------------------------------------------------------------------------- results


def _activity(ctx: Ctx) -> dict[int, str]:
    """§5.3.3 groups by the user's number of interactions (after the protocol's k-core), named as
    :func:`~reasonrec.eval.results.user_subgroups` names them."""
    counts = ctx.kctx.tables.interactions["user_id"].value_counts()
    edges = list(ctx.cfg.results.activity_edges)
    names = [f"activity:<{edges[0]}"] + [f"activity:{a}-{b - 1}" for a, b in zip(edges, edges[1:], strict=False)]
    names.append(f"activity:>={edges[-1]}")
    users = ctx.test["user_id"].unique()
    return {int(u): names[int(np.searchsorted(edges, int(counts.get(u, 0)), side="right"))] for u in users}


def prediction_rows(ctx: Ctx, variant: str, scores_per_row: list[np.ndarray]) -> pd.DataFrame:
    """One variant's scores as ``predictions.parquet`` rows: per (user, candidate slot) a sample (slot 0 = the
    positive, then the negatives in list order, so every draw and variant pairs on the same samples) and the draw
    as the seed (the schema averages seeds: NDCG averaged over the 3 negative draws, §5.1.2)."""
    users = sorted(ctx.test["user_id"].unique())
    uidx = {int(u): i for i, u in enumerate(users)}
    act = _activity(ctx)
    n_c = len(ctx.test["candidate_ids"].iloc[0])
    frames = []
    for row, sc in zip(ctx.test.to_dict("records"), scores_per_row, strict=True):
        ids = [int(c) for c in row["candidate_ids"]]
        pos = ids.index(int(row["item_id"]))
        slots = [pos] + [j for j in range(len(ids)) if j != pos]
        u = int(row["user_id"])
        frames.append(pd.DataFrame({
            "model": "ranker", "variant": variant, "seed": int(row["draw"]),
            "sample": uidx[u] * n_c + np.arange(len(ids)), "user_id": u,
            "label": np.r_[1, np.zeros(len(ids) - 1)].astype(np.int8),
            "score": np.asarray(sc, dtype=np.float64)[slots], "user_type": "warm", "activity": act[u]}))
    return pd.concat(frames, ignore_index=True)


def _order_scores(df: pd.DataFrame) -> list[np.ndarray]:
    return [steps.scores_from_order(list(o)) for o in df["order"]]


def run(cfg: Config, run_dir: RunDir) -> dict:
    ctx = stage_samples(cfg, run_dir)
    v = cfg.variants
    scores = {b: list(stage_baseline(ctx, b)["scores"]) for b in cfg.baselines}   # cheap: first
    rankings: dict[str, pd.DataFrame] = {}
    # the paper's main chain first (teacher → SFT → SFT + GRPO → its ablations), then the LLM baselines, then Best of
    # N: a run cut short by its time budget has the rows the paper's claims rest on
    if "teacher" in v:
        rankings["teacher"] = stage_rank(ctx, "teacher", "reflect")
    sft_info = None
    if any(x in v for x in ("sft", "starec", "no_reflection")):
        train_sft_agent(ctx)
        sft_info = {k: val for k, val in ctx.run.stage("sft_data").info().items()
                    if k not in ("stage", "artifacts", "sha256", "seconds")}
        if "sft" in v:
            rankings["sft"] = stage_rank(ctx, "sft", "reflect")
    if "starec" in v or "no_reflection" in v:
        train_grpo_agent(ctx, "starec", "sft")
        for name in ("starec", "no_reflection"):
            if name in v:
                rankings[name] = stage_rank(ctx, *AGENTS[name])
    if "llmrank" in v:
        rankings["llmrank"] = stage_llmrank(ctx)
    if "no_sft" in v:
        train_grpo_agent(ctx, "no_sft", None)
        rankings["no_sft"] = stage_rank(ctx, "no_sft", "reflect")
    if "agentcf" in v:
        rankings["agentcf"] = stage_agentcf(ctx)
    if "sft" in v and cfg.eval.best_of_n > 1:
        rankings[f"sft/best_of_{cfg.eval.best_of_n}"] = stage_best_of_n(ctx, "sft")
    ctx.release()
    frames = [prediction_rows(ctx, name, _order_scores(df)) for name, df in rankings.items()]
    frames += [prediction_rows(ctx, b, sc) for b, sc in scores.items()]
    preds = pd.concat(frames, ignore_index=True)
    io.write_parquet(run_dir.root / "predictions.parquet", preds)
    variants = [*rankings, *cfg.baselines]
    section = cfg.results
    if section.reference not in variants:
        section = section.model_copy(update={"reference": variants[0]})
        run_dir.warn(f"results.reference '{cfg.results.reference}' was not run; deltas are against '{variants[0]}'")
    parse = {name: ctx.run.stage(_stage_of(cfg, name)).info().get("rank") for name in rankings}
    memories = {f"{a}-{m}": run_dir.stage(f"replay/{a}-{m}/test").info().get("reflections")
                for a, m in {AGENTS[x] for x in rankings if x in AGENTS}}
    data = {"train_users": int(ctx.train["user_id"].nunique()), "test_users": int(ctx.test["user_id"].nunique()),
            "test_lists": len(ctx.test), "draws": int(ctx.test["draw"].nunique())}
    summary = {"method": "starec", "data": data, "sft_data": sft_info, "parse": parse, "reflections": memories,
               "variants": {k: TITLES.get(k.split("/")[0], "") + (" (oracle best of N)" if "/" in k else "")
                            for k in variants}}
    splits = ctx.kctx.splits
    res = R.build_results(
        preds, section, method="starec", dataset=splits.dataset, protocol=splits.protocol,
        split_checksum=R.split_checksum({"train": ctx.train, "test": ctx.test}), config=cfg.model_dump(mode="json"),
        packages=package_versions(), predictions="predictions.parquet", details=summary)
    R.write_results(run_dir.root, res, R.Timings.of_run(run_dir.root))
    table = steps.results_table(res, variants, titles=summary["variants"])
    io.write_text(run_dir.root / "results.md", table + "\n" + R.render_markdown(res, metric="ndcg@10"))
    summary["table"] = table
    return summary


def _stage_of(cfg: Config, name: str) -> str:
    if name in AGENTS:
        return "rank/{}-{}".format(*AGENTS[name])
    if name.startswith("sft/best_of_"):
        return f"best_of_{cfg.eval.best_of_n}/sft"
    return f"rank/{name}"
