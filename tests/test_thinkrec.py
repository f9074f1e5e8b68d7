"""ThinkRec's parts on the tiny random model: the soft-token path of the LLM interface, gate routing with exact
per-user fusion through that path, the mixed loss weights as the method wires them, reason synthesis counting,
keywords and the reason-quality metrics."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from reasonrec.llm.hf import TransformersLLM
from reasonrec.llm.soft_tokens import ACTIVE, choice_token_ids
from reasonrec.methods import thinkrec_steps as steps
from reasonrec.train.experts import GLOBAL, expert_mixture, expert_name, fused_adapter
from reasonrec.train.yesno import make_projector

PROMPT = "A user liked Heat (1995) and disliked Babe (1995). Will the user enjoy Casino (1995)? Answer with Yes or No."


@pytest.fixture(scope="module")
def llm(tiny_model_path):
    torch.manual_seed(0)
    return TransformersLLM.from_model(
        __import__("transformers").AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32).eval(),
        __import__("transformers").AutoTokenizer.from_pretrained(tiny_model_path), "tiny")


def _projector(llm, dim=6, seed=0):
    torch.manual_seed(seed)
    return make_projector(dim, llm.model.config.hidden_size, 2)


def test_soft_tokens_change_the_logits_and_score_like_one_row(llm):
    """The placeholder rows are replaced by projector(v): other vectors → other logits; a text prompt with the
    placeholder but no injection differs too; batching with padding does not change a row."""
    scorer = llm.with_soft_tokens(_projector(llm))
    ph = scorer.placeholder
    prompt = PROMPT + f" User and item: {ph} {ph}."
    rng = np.random.default_rng(0)
    v1, v2 = rng.normal(size=(2, 6)), rng.normal(size=(2, 6))
    ids = choice_token_ids(llm.tokenizer, ("Yes", "No"))
    a = scorer.answer_logits([prompt, prompt], [v1, v2], ids)
    plain = llm.with_soft_tokens(None).answer_logits([PROMPT], None, ids)
    assert not np.allclose(a[0], a[1], atol=1e-4)            # the vectors reach the logits
    # the same injection computed by hand: replace the placeholder embeddings and run the model
    enc = torch.tensor([llm.encode_prompt(prompt)])
    emb = llm.model.get_input_embeddings()(enc).detach().clone()
    with torch.no_grad():
        emb[enc == scorer.placeholder_id] = scorer.projector(torch.tensor(v1, dtype=torch.float32))
        ref = llm.model(inputs_embeds=emb).logits[0, -1, ids].numpy()
    np.testing.assert_allclose(a[0], ref, atol=1e-4)
    # padded in a batch with a longer prompt, the row scores as alone
    longer = PROMPT + " The user also liked Fargo (1996) and Heat." + f" User and item: {ph} {ph}."
    both = scorer.answer_logits([prompt, longer], [v1, v2], ids)
    np.testing.assert_allclose(both[0], a[0], atol=1e-4)
    assert plain.shape == (1, 2)
    p = scorer.choice_probs([prompt, prompt], [v1, v2])
    np.testing.assert_allclose(p.sum(1), 1.0)
    assert abs(p[0, 0] - p[1, 0]) > 1e-6
    with pytest.raises(Exception, match="placeholder"):
        scorer.answer_logits([prompt], [v1[:1]], ids)        # 2 placeholders, 1 vector
    g = scorer.generate([prompt, prompt], [v1, v2], max_new_tokens=6, temperature=1.0, seed=3)
    assert len(g) == 2 and all(isinstance(t, str) for t in g)


def _expert_llm(tiny_model_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    cfg = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    model = get_peft_model(base, LoraConfig(**cfg), adapter_name=GLOBAL)
    for i in range(2):
        model.add_adapter(expert_name(i), LoraConfig(**cfg))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.normal_(0, 0.3)
    return TransformersLLM.from_model(model.eval(), AutoTokenizer.from_pretrained(tiny_model_path), "tiny-experts")


def test_gate_routes_constructed_users_and_fused_scores_are_exact(tiny_model_path):
    """Constructed MF embeddings: a user on centre 0 → expert0 alone; a user between the centres → fused; a cold
    user (zero embedding) → uniform weights → global. The fused rows scored through the soft-token path inside
    expert_mixture equal the same rows scored with an exactly merged (cat) adapter of that user's weights."""
    centers = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    user_emb = np.array([[0, 0, 0], [2.0, 0.05, 0], [1.0, 0.9, 0.3], [0.0, 0.0, 0.0], [0.7, 0.72, 0.0]])
    users = np.array([1, 2, 3, 4, 2])               # one sample per row; user 2 twice (row 0 is padding)
    routes = steps.route_samples(users, user_emb, centers, tau=0.1, single_margin=0.6, entropy_threshold=0.95)
    kinds = {int(u): r.kind for u, r in zip(users, routes, strict=True)}
    assert kinds == {1: "expert", 2: "fused", 3: "global", 4: "global"}
    assert routes[0].expert == 0
    w = np.array(routes[1].weights)
    assert w.max() <= 0.5 + 0.6 / 2 and np.isclose(w.sum(), 1)
    # the thresholds are the knobs: a lower single margin sends user 2 to its top expert instead
    lower = steps.route_samples(np.array([2]), user_emb, centers, tau=0.1, single_margin=0.0, entropy_threshold=0.95)
    assert lower[0].kind == "expert"

    llm = _expert_llm(tiny_model_path)
    scorer = llm.with_soft_tokens(None)
    ids = choice_token_ids(llm.tokenizer, ("Yes", "No"))
    prompts = [PROMPT, PROMPT + " Think about it.", PROMPT + " The user likes crime films."]
    weights = torch.tensor([[0.7, 0.3], [0.2, 0.8], [0.5, 0.5]])
    names = [expert_name(0), expert_name(1)]
    fused = scorer.answer_logits(prompts, None, ids, adapter=ACTIVE,
                                 batch_context=lambda b: expert_mixture(llm.model, names, weights[b]))
    for j, p in enumerate(prompts):
        name = fused_adapter(llm.model, names, weights[j].tolist(), f"user{j}")
        alone = scorer.answer_logits([p], None, ids, adapter=name)
        np.testing.assert_allclose(fused[j], alone[0], atol=1e-4)
    llm.model.set_adapter(expert_name(0))
    one_hot = scorer.answer_logits(prompts[:1], None, ids, adapter=ACTIVE)
    np.testing.assert_allclose(one_hot[0], scorer.answer_logits(prompts[:1], None, ids, adapter=expert_name(0))[0],
                               atol=1e-4)
    assert not np.allclose(fused[0], one_hot[0], atol=1e-4)


def test_method_wires_the_mixed_loss_weights_into_the_trainer(tiny_model_path, tmp_path):
    """The think LoRA's trainer: reasoning rows weighted (0.1 BCE, 0.9 LM), label rows (0.9, 0.1); the loss of a
    batch equals the weighted per-example BCE and LM computed from the model's own logits."""
    from reasonrec.train.config import YesNoConfig
    from reasonrec.train.losses import answer_lm_loss, yes_no_bce_loss
    from reasonrec.train.yesno import build_yesno_trainer

    df = pd.DataFrame({"prompt": [PROMPT, PROMPT], "label": [1, 0], "kind": ["reason", "label"],
                       "answer": [steps.answer_text(1, "They like crime films."), steps.answer_text(0)]})
    cfg = YesNoConfig.model_validate({
        "model": {"name": str(tiny_model_path)}, "data": {"train": tmp_path / "x.parquet"},
        "training": {"output_dir": tmp_path / "out", "max_length": 256}, "reason_share": None})
    assert cfg.reason_weights == (0.1, 0.9) and cfg.label_weights == (0.9, 0.1) and cfg.score == "yes_vs_no"
    trainer, _ = build_yesno_trainer(cfg, df)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    kinds = batch["kind"].tolist()
    with torch.no_grad():
        loss = float(trainer.compute_loss(trainer.model, batch))
        yes, no, logits, keep = trainer.forward_scores(trainer.model, batch)
        bce = yes_no_bce_loss(yes, no, batch["labels_yn"])
        lm = answer_lm_loss(logits, batch["input_ids"][:, -keep:], batch["answer_mask"][:, -keep:])
    w = {0: (0.1, 0.9), 1: (0.9, 0.1)}          # REASON = 0, LABEL = 1
    want = np.mean([w[k][0] * float(b) + w[k][1] * float(m) for k, b, m in zip(kinds, bce, lm, strict=True)])
    assert sorted(kinds) == [0, 1]
    assert loss == pytest.approx(want, rel=1e-5)
    assert not loss == pytest.approx(float((0.5 * bce + 0.5 * lm).mean()), rel=1e-3)


class _ScriptedTeacher:
    """Answers from a script per (sample, try): exercises the re-ask and give-up bookkeeping only."""

    def __init__(self, script):
        self.script, self.calls = script, []

    def generate(self, prompts, n=1, max_new_tokens=0, seed=0, temperature=0.0):
        from reasonrec.llm.base import Generation

        out = []
        for p in prompts:
            self.calls.append(p)
            key = p.split("Will the user enjoy")[0]
            tries = sum(c.split("Will the user enjoy")[0] == key for c in self.calls)
            out.append(Generation(texts=[self.script[key][min(tries, len(self.script[key])) - 1]]))
        return out


def test_reason_synthesis_re_asks_with_the_hint_and_counts(ml100k_dir):
    from reasonrec.llm.prompts import item_fields

    fields = [{"history": [{**item_fields({"title": f"Movie {i}"}), "liked": True}],
               "target": item_fields({"title": f"Target {i}"})} for i in range(3)]
    keys = [steps.reason_prompt("movie", f).split("Will the user enjoy")[0] for f in fields]
    script = {keys[0]: ["<think>x</think>\nAnswer: Yes\nReason: likes it."],
              keys[1]: ["Answer: Yes\nReason: wrong.", "Answer: No\nReason: dislikes dramas."],
              keys[2]: ["Answer: Yes\nReason: a.", "Answer: Yes\nReason: b."]}
    teacher = _ScriptedTeacher(script)
    syn = steps.synthesize_reasons(teacher, "movie", fields, [1, 0, 0], max_tries=2, max_new_tokens=8,
                                   temperature=0.0, seed=0)
    assert syn.tries == [1, 2, 2] and syn.gave_up == [False, False, True]
    assert syn.reasons == ["likes it.", "dislikes dramas.", "b."]
    assert sum("the correct answer is No" in c for c in teacher.calls) == 2   # both re-asks carry the hint
    assert syn.stats()["gave_up"] == 1 and syn.stats()["first_try_share"] == pytest.approx(1 / 3)
    assert steps.parse_answer("<think>yes or no?</think> Answer: **No**") == "No"
    assert steps.strip_answer("Yes. Because heists.") == "Because heists."


def test_keywords_come_from_the_metadata_and_are_at_most_k():
    from reasonrec.knowledge import load_encoder

    rows = [{"title": "Star Wars (1977)", "categories": "Action|Adventure|Romance|Sci-Fi|War"},
            {"title": "Toy Story (1995)", "categories": "Animation|Children's|Comedy"}]
    kw = steps.extract_keywords(rows, load_encoder("minilm"), k=3)
    for text, row in zip(kw, rows, strict=True):
        words = text.split(", ")
        assert 1 <= len(words) <= 3
        assert all(w in steps.metadata_text(row).lower() for w in words)


def test_reason_metrics_rank_a_paraphrase_above_an_unrelated_text():
    from reasonrec.eval.reasons import reason_report

    ref = ["The user likes crime thrillers, and Casino is a crime drama by Scorsese."]
    close = reason_report(["The user enjoys crime thrillers; Casino is a Scorsese crime drama."], ref)
    far = reason_report(["Bananas are yellow and grow in tropical climates."], ref)
    for k in ("bleu", "rouge_l", "bertscore"):
        assert close[k] > far[k], k
    if close["meteor"] is not None:    # WordNet present offline (Debian wordnet-base)
        assert close["meteor"] > far["meteor"]
