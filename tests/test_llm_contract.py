"""One battery of behaviour checks run against every LLM backend (scikit-learn's ``parametrize_with_checks`` idea).

Backends: transformers on the tiny random model; llama.cpp on the bundled GGUF; the OpenAI-compatible backend
against a real llama.cpp server (``python -m reasonrec.llm.llamacpp_server``, llama-cpp-python's server with the
backend's model params) on 127.0.0.1 serving the bundled GGUF; vLLM on the tiny model. Each is skipped, with the
reason, when its library is not importable.

Every test that runs llama.cpp in the test process is marked ``own_process`` (tests/conftest.py: it runs in a
forked child): a native crash inside llama.cpp (issue 12: a segfault on AMX CPUs) is then reported as a failure of
that test, by name, and the suite goes on to its summary, instead of the whole run dying with exit 139.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import re
import signal
import socket
import subprocess
import sys
import time
import warnings

import httpx
import numpy as np
import pytest
from pydantic import ValidationError

from reasonrec.errors import BackendError
from reasonrec.llm.base import LLM, Generation, load_llm

# In a child process of its own (tests/conftest.py): a segfault fails the test instead of ending the suite.
OWN_PROCESS = pytest.mark.own_process
BACKENDS = ["transformers", pytest.param("llamacpp", marks=OWN_PROCESS), "openai", "vllm"]
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


def _need_llama_server() -> None:
    _need_llamacpp()
    try:
        import llama_cpp.server.app  # noqa: F401  (needs the [server] extra: fastapi, uvicorn, sse-starlette)
    except ImportError as err:
        pytest.skip(f"llama_cpp.server is not importable ({err}); pip install 'llama-cpp-python[server]'")


@contextlib.contextmanager
def _serve(log_path, *flags: str):
    """``python -m reasonrec.llm.llamacpp_server`` on a free loopback port serving the bundled GGUF; yields its URL."""
    port = _free_port()
    log = open(log_path, "wb")  # a file, not a pipe: llama.cpp's load log would fill a pipe and block the server
    proc = subprocess.Popen(
        [sys.executable, "-m", "reasonrec.llm.llamacpp_server", "--model", "smollm2-135m", "--host", "127.0.0.1",
         "--port", str(port), "--n_ctx", "512", "--n_threads", "1", "--n_threads_batch", "1", *flags],
        stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the llama.cpp server exited ({proc.returncode}): "
                            f"{log_path.read_text(errors='replace')[-2000:]}")
            try:
                if httpx.get(url + "/v1/models", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                pytest.fail("the llama.cpp server did not start within 90 s")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory):
    """A real llama.cpp OpenAI-compatible server on loopback serving the bundled SmolLM2 GGUF, as a user starts it."""
    _need_llama_server()
    with _serve(tmp_path_factory.mktemp("llama_server") / "server.log") as url:
        yield url


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


@OWN_PROCESS
def test_llamacpp_batched_greedy_equals_one_at_a_time(llamacpp_llm):
    batched = llamacpp_llm.generate(LLAMACPP_PROMPTS, max_new_tokens=16)
    single = _one_at_a_time(llamacpp_llm, LLAMACPP_PROMPTS, max_new_tokens=16)
    assert [g.texts for g in batched] == [g.texts for g in single]
    assert [g.completion_tokens for g in batched] == [g.completion_tokens for g in single]
    assert [g.prompt_tokens for g in batched] == [g.prompt_tokens for g in single]
    assert len({g.completion_tokens[0] for g in batched}) > 1  # rows of different lengths left the batch
    # A prompt alone (the whole prompt is then the shared prefix) gives the same text as inside the batch.
    assert llamacpp_llm.generate(LLAMACPP_PROMPTS[-1:], max_new_tokens=16)[0].texts == batched[-1].texts


@OWN_PROCESS
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


@OWN_PROCESS
def test_llamacpp_batched_stop_strings(llamacpp_llm):
    batched = llamacpp_llm.generate(LLAMACPP_PROMPTS, max_new_tokens=16, stop=STOP)
    single = _one_at_a_time(llamacpp_llm, LLAMACPP_PROMPTS, max_new_tokens=16, stop=STOP)
    assert [g.texts for g in batched] == [g.texts for g in single]
    assert [g.completion_tokens for g in batched] == [g.completion_tokens for g in single]
    assert all(g.text and not any(s in g.text for s in STOP) for g in batched)
    assert max(g.completion_tokens[0] for g in batched) < 16  # stopped early, not cut afterwards


@OWN_PROCESS
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


@OWN_PROCESS
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


# --- llama.cpp: extra buffer types (use_extra_bufts), the AMX segfault of issue 12 ----------------------------------

# Run in a fresh interpreter: the bundled file as shipped (Q4_1) or converted (Q8_0), extra buffers forced on or
# off, through every path that crashed on the AMX machine: the issue's own call (a plain completion of "The capital
# of France is"), the one-at-a-time and the batched decode loops, scoring.
_CHILD = """
import json, sys
from reasonrec.llm import load_llm
kind, setting = sys.argv[1], sys.argv[2]
llm = load_llm("smollm2-135m", backend="llamacpp", n_ctx=256, n_threads=1, requantize=kind, extra_buffers=setting,
               system_prompt="Be brief.")
plain = llm._gen.create_completion("The capital of France is", max_tokens=16, temperature=0.0)["choices"][0]["text"]
prompts = ["What is the capital of France?", "Name a fruit."]
llm.options.parallel = 1
one = [g.text for g in llm.generate(prompts, max_new_tokens=8)]
llm.options.parallel = 16
batched = [g.text for g in llm.generate(prompts, max_new_tokens=8)]
probs = llm.choice_probs(prompts[:1], ("Yes", "No")).tolist()
print(json.dumps({"use_extra_bufts": bool(llm._gen.model_params.use_extra_bufts), "plain": plain, "one_at_a_time": one,
                  "batched": batched, "probs": probs}))
"""


def _run_child(kind: str, setting: str) -> subprocess.CompletedProcess:
    # -X faulthandler: a native crash prints the Python stack it happened under, for the failure message.
    return subprocess.run([sys.executable, "-X", "faulthandler", "-c", _CHILD, kind, setting], capture_output=True,
                          text=True, timeout=300)


def test_extra_buffers_rule_follows_amx():
    from reasonrec.llm import cpu
    from reasonrec.llm.llamacpp import LlamaCppOptions, amx_present, use_extra_buffers

    assert LlamaCppOptions().extra_buffers == "auto"
    assert use_extra_buffers("on") is True and use_extra_buffers("off") is False
    assert use_extra_buffers("auto") is (not amx_present())
    # The flags line of the machine in issue 12 (an AMX Xeon), trimmed, and this project's EPYC (no AMX).
    xeon = frozenset("fpu avx2 avx512f avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8".split())
    epyc = frozenset("fpu avx2 avx512f avx512_vnni avx512_bf16 avx512_vp2intersect".split())
    assert cpu.has_amx(xeon) and not cpu.has_amx(epyc)
    with pytest.raises(ValidationError, match="extra_buffers"):
        LlamaCppOptions(extra_buffers="maybe")


def test_cpu_flags_reads_the_flags_line(tmp_path):
    from reasonrec.llm import cpu

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Intel(R) Xeon(R)\nflags\t\t: fpu sse avx512f amx_tile amx_int8\n\n"
                    "processor\t: 1\nflags\t\t: fpu sse\n")
    assert cpu.cpu_flags(info) == frozenset({"fpu", "sse", "avx512f", "amx_tile", "amx_int8"})
    assert cpu.cpu_flags(tmp_path / "missing") == frozenset()


@pytest.mark.parametrize("setting", ["off", "on"])
@pytest.mark.parametrize("kind", ["none", "q8_0"], ids=["q4_1", "q8_0"])
def test_bundled_quantized_files_with_extra_buffers_forced(kind, setting):
    """Issue 12's reproduction, both ways, each in its own process: with extra buffers off the bundled Q4_1 file
    and its Q8_0 conversion must answer on every CPU; on, they segfaulted on an AMX Xeon. That case runs only where
    AMX is present (elsewhere the AMX kernels are never used, so it cannot crash), and reports what happened."""
    _need_llamacpp()
    from reasonrec.llm import cpu
    from reasonrec.llm.llamacpp import amx_present, llama_cpp_version, use_extra_buffers

    if setting == "on" and not amx_present():
        flags = sorted(f for f in cpu.cpu_flags() if f.startswith(("avx512", "amx")))
        pytest.skip(f"no AMX on this CPU (flags {' '.join(flags) or 'unknown'}) nor in this llama.cpp build: the "
                    "extra-buffer crash of issue 12 cannot occur here")
    proc = _run_child(kind, setting)
    name = {"none": "Q4_1", "q8_0": "Q8_0"}[kind]
    if proc.returncode < 0:
        died = f"{signal.Signals(-proc.returncode).name}: {proc.stderr[-1500:]}"
        if setting == "off":
            pytest.fail(f"{name} with use_extra_bufts off died with {died}")
        assert use_extra_buffers("auto") is False  # the default on this CPU is the path that survives
        pytest.xfail(f"{name} with use_extra_bufts on crashed on this AMX CPU, as issue 12 diagnosed ({died[:200]})")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["use_extra_bufts"] is (setting == "on")
    assert out["plain"].startswith(" Paris."), out  # what the AMX machine answered with use_extra_bufts off
    assert all(out["one_at_a_time"]) and all(out["batched"]), out
    assert abs(sum(out["probs"][0]) - 1.0) < 1e-6
    if setting == "on":  # only on an AMX CPU: it did not crash, so this build of llama.cpp may be fixed
        warnings.warn(f"{name} with use_extra_bufts on did not crash on this AMX CPU: llama.cpp "
                      f"(llama-cpp-python {llama_cpp_version()}) may have fixed it; "
                      "extra_buffers=auto still turns them off here", stacklevel=1)


_LOAD_LOG = """
import sys
from llama_cpp import Llama
from reasonrec.llm import bundled
from reasonrec.llm.llamacpp import model_params
with model_params(use_extra_bufts=sys.argv[1] == "on"):
    llm = Llama(str(bundled.smollm2_gguf()), n_ctx=64, n_threads=1, verbose=True)
print("use_extra_bufts", llm.model_params.use_extra_bufts, file=sys.stderr)
"""


# How llama.cpp's load log names an extra buffer type: a tensor declining it ("cannot be used with preferred buffer
# type CPU_REPACK") or a model buffer in it ("AMX model buffer size"); an AMX CPU prefers AMX, others CPU_REPACK.
_EXTRA_BUFT = re.compile(r"buffer type (CPU_REPACK|AMX)\b|\b(CPU_REPACK|AMX) model buffer")


@pytest.mark.parametrize("setting", ["on", "off"])
def test_extra_buffers_setting_reaches_llama_cpp(setting):
    """llama.cpp itself, not only the params struct, sees the setting: its load log names an extra buffer type
    (used, or declined by the bundled file's tensors) only when they are in play."""
    _need_llamacpp()
    import llama_cpp

    info = llama_cpp.llama_print_system_info().decode()
    if setting == "on" and "REPACK = 1" not in info and "AMX_INT8 = 1" not in info:
        pytest.skip("this llama.cpp build has no extra CPU buffer type (neither REPACK nor AMX_INT8) to look for")
    proc = subprocess.run([sys.executable, "-c", _LOAD_LOG, setting], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"use_extra_bufts {setting == 'on'}" in proc.stderr
    assert bool(_EXTRA_BUFT.search(proc.stderr)) is (setting == "on"), proc.stderr[-3000:]


def test_llamacpp_server_entry_point_loads_with_extra_buffers_off(tmp_path):
    """The loopback server users start gets the same model params: forced off, llama.cpp never considers an extra
    buffer type, and the server answers a chat completion (the request that crashed it in issue 12)."""
    _need_llama_server()
    log = tmp_path / "server.log"
    with _serve(log, "--extra_buffers", "off") as url:
        res = httpx.post(url + "/v1/chat/completions", timeout=60, json={
            "messages": [{"role": "user", "content": "What is the capital of France?"}], "max_tokens": 8,
            "temperature": 0})
    assert res.status_code == 200 and res.json()["choices"][0]["message"]["content"]
    text = log.read_text(errors="replace")
    assert "reasonrec: loading with use_extra_bufts=False (--extra_buffers off" in text
    assert not _EXTRA_BUFT.search(text), text[-3000:]


def test_llamacpp_server_takes_the_bundled_alias():
    from reasonrec.llm import bundled
    from reasonrec.llm.llamacpp_server import _resolve_model

    try:
        path = str(bundled.smollm2_gguf())
    except BackendError as err:
        pytest.skip(str(err))
    assert _resolve_model(["--model", "smollm2-135m", "--port", "1"]) == ["--model", path, "--port", "1"]
    assert _resolve_model(["--model=smollm2-135m"]) == [f"--model={path}"]
    assert _resolve_model(["--model", "x.gguf", "--model_alias", "smollm2-135m"]) == \
        ["--model", "x.gguf", "--model_alias", "smollm2-135m"]


def test_openai_errors_never_echo_url_credentials():
    # a closed loopback port: the backend's first call (listing models) fails and names the server
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(BackendError) as err:
        load_llm(f"http://user:s3cret@127.0.0.1:{port}/v1", max_retries=0)
    assert "s3cret" not in str(err.value)
    assert f"127.0.0.1:{port}" in str(err.value)
