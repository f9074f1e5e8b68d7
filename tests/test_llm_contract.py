"""One battery of behaviour checks run against every LLM backend (scikit-learn's ``parametrize_with_checks`` idea).

Backends: transformers on the tiny random model; llama.cpp on the bundled GGUF; the OpenAI-compatible backend
against a real ``python -m llama_cpp.server`` on 127.0.0.1 serving the bundled GGUF; vLLM on the tiny model.
Each is skipped, with the reason, when its library is not importable.
"""

from __future__ import annotations

import importlib.util
import socket
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest

from reasonrec.errors import BackendError
from reasonrec.llm.base import LLM, Generation, load_llm

BACKENDS = ["transformers", "llamacpp", "openai", "vllm"]
STOP = [" ", "\n"]
# The bundled model is real compute on CPU: a short system prompt (instead of SmolLM2's default one) keeps every
# prompt near 20 tokens. The HTTP server also sorts the whole vocabulary in Python for each echoed token.
SYSTEM = "Be brief."


def _need_llamacpp() -> None:
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed (pip install 'reasonrec[llamacpp]')")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory):
    """A real llama.cpp OpenAI-compatible server on loopback serving the bundled SmolLM2 GGUF."""
    _need_llamacpp()
    try:
        import llama_cpp.server.app  # noqa: F401  (needs the [server] extra: fastapi, uvicorn, sse-starlette)
    except ImportError as err:
        pytest.skip(f"llama_cpp.server is not importable ({err}); pip install 'llama-cpp-python[server]'")
    from reasonrec.llm.bundled import smollm2_gguf

    port = _free_port()
    log_path = tmp_path_factory.mktemp("llama_server") / "server.log"
    log = open(log_path, "wb")  # a file, not a pipe: llama.cpp's load log would fill a pipe and block the server
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(smollm2_gguf()), "--host", "127.0.0.1",
         "--port", str(port), "--n_ctx", "512", "--n_threads", "1", "--n_threads_batch", "1"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama_cpp.server exited: {log_path.read_text(errors='replace')[-2000:]}")
            try:
                if httpx.get(url + "/v1/models", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                pytest.fail("llama_cpp.server did not start within 90 s")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module", params=BACKENDS)
def llm(request, tiny_model_path) -> LLM:
    kind = request.param
    if kind == "transformers":
        return load_llm(str(tiny_model_path), backend="transformers", batch_size=4, threads=1)
    if kind == "llamacpp":
        _need_llamacpp()
        return load_llm("smollm2-135m", backend="llamacpp", n_ctx=512, n_threads=1, system_prompt=SYSTEM)
    if kind == "openai":
        url = request.getfixturevalue("llama_server")
        return load_llm(url, tokenizer="smollm2-135m", max_concurrency=2, system_prompt=SYSTEM)
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vllm is not importable (GPU-only extra reasonrec[vllm])")
    return load_llm(str(tiny_model_path), backend="vllm", gpu_memory_utilization=0.3)


def _remote(llm) -> bool:
    return llm.model_id.startswith("openai:")


PROMPTS = ["Say hello.", "Is the sky blue? Answer Yes or No.", "Name a fruit."]


def test_is_an_llm(llm):
    assert isinstance(llm, LLM)
    assert isinstance(llm.model_id, str) and llm.model_id
    assert {"generate", "choice_probs"} <= set(llm.supports)


def test_generate_shapes_counts_and_greedy_determinism(llm):
    gens = llm.generate(PROMPTS, max_new_tokens=6)
    assert len(gens) == len(PROMPTS)
    for g in gens:
        assert isinstance(g, Generation) and len(g.texts) == 1
        assert g.prompt_tokens > 0
        assert 1 <= g.completion_tokens[0] <= 6
    if not _remote(llm):  # a server reuses cached KV prefixes, whose last-bit differences can flip a greedy tie
        again = llm.generate(PROMPTS, max_new_tokens=6)
        assert [g.texts for g in again] == [g.texts for g in gens]


def test_generate_n_samples_with_seed(llm):
    kw = dict(n=3, temperature=1.0, top_p=0.9, max_new_tokens=5, seed=1)
    gens = llm.generate(PROMPTS[:2], **kw)
    assert [len(g.texts) for g in gens] == [3, 3]
    assert all(len(g.completion_tokens) == 3 and all(1 <= c <= 5 for c in g.completion_tokens) for g in gens)
    assert len({t for g in gens for t in g.texts}) > 1  # sampled, not six copies of one text
    if not _remote(llm):  # the same seed reproduces the samples
        assert [g.texts for g in llm.generate(PROMPTS[:2], **kw)] == [g.texts for g in gens]


def test_generate_respects_stop_strings(llm):
    for g in llm.generate(PROMPTS, max_new_tokens=12, stop=STOP):
        assert not any(s in g.text for s in STOP), g.text


def test_string_prompt_equals_single_user_message(llm):
    a = llm.choice_probs(["Name a colour."], ("Red", "Blue"))
    b = llm.choice_probs([[{"role": "user", "content": "Name a colour."}]], ("Red", "Blue"))
    assert np.allclose(a, b, atol=1e-3 if _remote(llm) else 1e-6)
    if not _remote(llm):
        assert llm.generate(["Name a colour."], max_new_tokens=5)[0].text == \
            llm.generate([[{"role": "user", "content": "Name a colour."}]], max_new_tokens=5)[0].text


def test_choice_probs_are_distributions(llm):
    probs = llm.choice_probs(PROMPTS, ("Yes", "No"))
    assert probs.shape == (3, 2)
    assert np.allclose(probs.sum(1), 1.0) and (probs >= 0).all()
    three = llm.choice_probs(PROMPTS[:1], ("Yes", "No", "Not sure"))  # a multi-token choice
    assert three.shape == (1, 3) and np.isclose(three.sum(), 1.0)


def test_sequence_logprob_is_consistent(llm):
    if "sequence_logprob" not in llm.supports:
        pytest.skip(f"{llm.model_id} does not offer sequence_logprob")
    res = llm.sequence_logprob(PROMPTS[:2] + PROMPTS[:1], ["Hello there", "Yes", ""])
    assert len(res) == 3
    for r in res[:2]:
        assert r.token_logps and all(lp <= 1e-6 for lp in r.token_logps)
        assert np.isclose(r.total, sum(r.token_logps))
        assert len(r.tokens) == len(r.token_logps)
    assert res[2].total == 0.0 and res[2].token_logps == []


def test_choice_probs_agree_with_sequence_logprob(llm):
    """P(choice) ∝ Σ_variants exp(log p(variant | prompt)): the two calls must tell the same story."""
    if "sequence_logprob" not in llm.supports:
        pytest.skip(f"{llm.model_id} does not offer sequence_logprob")
    prompt = PROMPTS[1]
    probs = llm.choice_probs([prompt], ("Yes", "No"))[0]
    mass = [sum(np.exp(r.total) for r in llm.sequence_logprob([prompt] * 2, [c, " " + c])) for c in ("Yes", "No")]
    expected = np.array(mass) / sum(mass)
    # The HTTP backend sees only the server's top-k first tokens, so it is approximate there.
    tol = 0.03 if _remote(llm) else 1e-4
    assert np.allclose(probs, expected, atol=tol), (probs, expected)


def test_bad_arguments_raise_backend_errors(llm):
    with pytest.raises(BackendError):
        llm.generate(PROMPTS, n=2, temperature=0.0)  # n identical greedy samples
    with pytest.raises(BackendError):
        llm.choice_probs(PROMPTS, ("Yes",))
    with pytest.raises(BackendError):
        llm.generate([{"content": "no role"}], max_new_tokens=2)  # type: ignore[list-item]
    with pytest.raises(BackendError):
        llm.generate(PROMPTS, max_new_tokens=2, adapter="no-such-adapter")
    if "sequence_logprob" in llm.supports:
        with pytest.raises(BackendError):
            llm.sequence_logprob(PROMPTS, ["only one"])


# --- llama.cpp: the batched generate path (continuous batching over llama.cpp sequences) -------------------------


@pytest.fixture(scope="module")
def llamacpp_llm():
    _need_llamacpp()
    # parallel=2 < the number of rows: finished rows must hand their sequence over to waiting ones.
    return load_llm("smollm2-135m", backend="llamacpp", n_ctx=512, n_threads=1, system_prompt=SYSTEM, parallel=2)


def _one_at_a_time(llm, *args, **kwargs):
    """The same call through llama-cpp-python's own create_completion, one prompt and one sample at a time."""
    parallel = llm.options.parallel
    llm.options.parallel = 1
    try:
        return llm.generate(*args, **kwargs)
    finally:
        llm.options.parallel = parallel


LLAMACPP_PROMPTS = PROMPTS + ["Write a haiku about rain."]  # "No." ends early, the haiku runs to the limit


def test_llamacpp_batched_greedy_equals_one_at_a_time(llamacpp_llm):
    batched = llamacpp_llm.generate(LLAMACPP_PROMPTS, max_new_tokens=16)
    single = _one_at_a_time(llamacpp_llm, LLAMACPP_PROMPTS, max_new_tokens=16)
    assert [g.texts for g in batched] == [g.texts for g in single]
    assert [g.completion_tokens for g in batched] == [g.completion_tokens for g in single]
    assert [g.prompt_tokens for g in batched] == [g.prompt_tokens for g in single]
    assert len({g.completion_tokens[0] for g in batched}) > 1  # rows of different lengths left the batch
    # A prompt alone (the whole prompt is then the shared prefix) gives the same text as inside the batch.
    assert llamacpp_llm.generate(LLAMACPP_PROMPTS[-1:], max_new_tokens=16)[0].texts == batched[-1].texts


def test_llamacpp_batched_samples_are_seeded_per_row(llamacpp_llm):
    kw = dict(n=3, temperature=1.0, top_p=0.9, max_new_tokens=8)
    gens = llamacpp_llm.generate(PROMPTS[:2], seed=3, **kw)
    assert all(len(set(g.texts)) > 1 for g in gens[:1])  # three samples of "Say hello." are not one text
    assert [g.texts for g in llamacpp_llm.generate(PROMPTS[:2], seed=3, **kw)] == [g.texts for g in gens]
    assert [g.texts for g in llamacpp_llm.generate(PROMPTS[:2], seed=4, **kw)] != [g.texts for g in gens]
    # A row's seed is its own (prompt, sample), not its slot or its neighbours: all six rows in one decode give the
    # same texts as two at a time.
    parallel = llamacpp_llm.options.parallel
    llamacpp_llm.options.parallel = 16
    try:
        assert [g.texts for g in llamacpp_llm.generate(PROMPTS[:2], seed=3, **kw)] == [g.texts for g in gens]
    finally:
        llamacpp_llm.options.parallel = parallel


def test_llamacpp_batched_stop_strings(llamacpp_llm):
    batched = llamacpp_llm.generate(LLAMACPP_PROMPTS, max_new_tokens=16, stop=STOP)
    single = _one_at_a_time(llamacpp_llm, LLAMACPP_PROMPTS, max_new_tokens=16, stop=STOP)
    assert [g.texts for g in batched] == [g.texts for g in single]
    assert [g.completion_tokens for g in batched] == [g.completion_tokens for g in single]
    assert all(g.text and not any(s in g.text for s in STOP) for g in batched)
    assert max(g.completion_tokens[0] for g in batched) < 16  # stopped early, not cut afterwards


def test_llamacpp_decode_calls_carry_consecutive_sequences(llamacpp_llm, monkeypatch):
    """llama.cpp computes a batch over separate KV streams as one step per run of consecutive sequence ids, so
    every decode call must carry sequences 0..k-1 in order; when rows finish with none waiting, the highest rows
    move down, and their texts stay those of the one-at-a-time path."""
    import llama_cpp

    from reasonrec.llm.llamacpp import LlamaCppLLM

    calls, moves = [], []
    decode, seq_cp = LlamaCppLLM._decode, llama_cpp.llama_memory_seq_cp

    def record_decode(ctx, batch, n_running):
        calls.append([batch.seq_id[i][0] for i in range(batch.n_tokens)])
        decode(ctx, batch, n_running)

    def record_cp(memory, src, dst, p0, p1):
        moves.append((src, dst))
        return seq_cp(memory, src, dst, p0, p1)

    monkeypatch.setattr(LlamaCppLLM, "_decode", staticmethod(record_decode))
    monkeypatch.setattr(llama_cpp, "llama_memory_seq_cp", record_cp)
    monkeypatch.setattr(llamacpp_llm.options, "parallel", 4)
    # Rows take sequences in prompt order. The short row in sequence 1 finishes first and leaves a hole below two
    # running rows (the one in sequence 3 moves into it, and must not jump ahead of sequence 0 in the batch); the
    # haiku in sequence 3 runs to the limit and moves down again when the others finish.
    prompts = ["Write a haiku about the sea.", "Is the sky blue? Answer Yes or No.",
               "Write a haiku about snow.", "Write a haiku about rain."]
    batched = llamacpp_llm.generate(prompts, max_new_tokens=16)
    for seqs in calls:
        distinct = list(dict.fromkeys(seqs))
        assert distinct == list(range(len(distinct))), seqs
    assert any(src > dst and src != 0 for src, dst in moves), moves  # a row moved down (not a prefix copy)
    assert [g.texts for g in batched] == [g.texts for g in _one_at_a_time(llamacpp_llm, prompts, max_new_tokens=16)]


def test_llamacpp_bundled_model_is_converted_once(tmp_path, monkeypatch):
    _need_llamacpp()
    from llama_cpp import Llama

    from reasonrec.llm import bundled
    from reasonrec.llm.llamacpp import requantized

    monkeypatch.setenv("REASONREC_CACHE_DIR", str(tmp_path))
    path = requantized(bundled.smollm2_gguf(), "q8_0")
    assert path.parent == tmp_path / "models" and [p.name for p in path.parent.iterdir()] == [path.name]
    meta = Llama(str(path), vocab_only=True, verbose=False).metadata
    assert meta["general.file_type"] == "7"  # LLAMA_FTYPE_MOSTLY_Q8_0
    built = path.stat().st_mtime_ns
    assert requantized(bundled.smollm2_gguf(), "q8_0") == path and path.stat().st_mtime_ns == built
    llm = load_llm("smollm2-135m", backend="llamacpp", n_ctx=256, n_threads=1, requantize="q8_0")
    assert llm.path == path and llm.generate(["Say hello."], max_new_tokens=4)[0].completion_tokens[0] > 0
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + bytes(60))
    with pytest.raises(BackendError, match="broken.gguf"):
        requantized(broken, "q8_0")
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # the failed conversion left nothing behind
