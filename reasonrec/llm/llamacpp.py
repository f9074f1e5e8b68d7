"""The llama.cpp backend (``pip install 'reasonrec[llamacpp]'``): GGUF models on CPU, the fast CPU path.

Prompts are rendered with the chat template stored in the GGUF (``tokenizer.chat_template``, via
llama-cpp-python's ``Jinja2ChatFormatter``) and tokenized once, so ``generate``, ``choice_probs`` and
``sequence_logprob`` all see exactly the same tokens. Sampling uses llama.cpp's sampler with ``top_k`` and
``min_p`` disabled and no repetition penalty, so ``temperature``/``top_p`` mean what they mean in transformers.

``generate`` decodes up to ``options.parallel`` sequences together (continuous batching): each row (a prompt × a
sample) owns one llama.cpp sequence id, its own KV stream and its own sampler; every ``llama_decode`` call carries one
new token of each running row plus prompt chunks of rows being admitted, and a finished row frees its sequence for
the next waiting row. The rows' longest common token prefix (system prompt and template opening; a whole prompt for
its ``n`` samples) is read once and its KV copied to every stream. llama-cpp-python's ``Llama`` class drives a
single sequence only, so this loop is written on its low-level API (``llama_batch``, ``llama_decode``,
``llama_memory_seq_cp``/``seq_rm``); the samplers are llama.cpp's own, chained as ``Llama.create_completion`` chains
them, and the context copies the generation context's settings (flash attention off ...). ``parallel=1`` keeps the
one-at-a-time ``create_completion`` path.

llama.cpp computes a batch over separate KV streams as one step per run of consecutive sequence ids, so the loop
keeps every call's rows on sequences 0..k-1 in order (see its comment); with rows on ids 15, 14, ... a call of 16
rows cost 16 steps, and batching was no faster per token than one row at a time.

The bundled SmolLM2 ships as Q4_1, a type llama.cpp's fast CPU matrix kernels (tinyBLAS) do not cover, and its Q4_1
dot products quantize the activations to 8 bits; so by default (``requantize: auto``) the bundled file is converted
once to BF16 in the user cache. Measured on this project's 2-core EPYC (AVX512-BF16), 1 thread, 32 ML-100K CoT
prompts: reading the prompts takes 31 s in Q4_1, 15 s in Q8_0, 12 s in BF16; the whole greedy run of 128 tokens
54 s in Q4_1 and 28 s in BF16 (``benchmarks/generation.py``). BF16 is also the type whose greedy texts match the
fp32 transformers model ("What is the capital of France?" → "The capital of France is Paris." in BF16 and F32;
Q4_1 and Q8_0 answer "L'Étoile, la Cité, ..."). A decode step stays compute-bound (about 6 ms per row in a step
of 16 rows, 12 ms for a step of one row), so batching rows gains about 2× per generated token. llama.cpp's CPU kernels are not batch-invariant (the same prompt read in
one batch or as prefix + last token gives slightly different logits), so greedy texts match the one-at-a-time path
except at near-ties.

llama.cpp's extra CPU buffer types (``use_extra_bufts``: weights repacked at load time for the AMX and CPU-repack
kernels) are turned off on CPUs with AMX (``extra_buffers: auto``): there the bundled Q4_1 file and its Q8_0
conversion segfault on the first decode with llama-cpp-python 0.3.36 (issue 12: an Intel Xeon with ``amx_int8``;
the same call with ``use_extra_bufts = False`` answers " Paris."), and BF16 weights never enter those buffers on
x86 anyway. Elsewhere they stay on: they hold the repacked Q4_0/Q4_K/IQ4_NL layouts, which are faster. Measured on
this project's EPYC (no AMX; ``benchmarks/llamacpp_extra_buffers.py``, 8 ML-100K prompts × 32 tokens, 1 thread, a
loaded machine): off/on tokens/s 1.11 for Q4_1, 1.06 for Q8_0, 1.00 for BF16, with identical greedy texts (no extra
buffer type takes them here: the same kernels run, the ratios are noise), and 0.57 for a Q4_0 conversion.

Scoring needs logits at every position (``logits_all=True``), which costs an extra ``n_ctx × vocab`` buffer and
slows prefill, so a second context that shares nothing but the file is opened lazily for scoring only.

Trained LoRA adapters (``options.adapters``, ``{name: peft folder or .gguf}``) are addressed per row by
``adapter=`` as on transformers: a peft folder is converted to a GGUF LoRA once, cached by its checksum
(:mod:`reasonrec.llm.lora_gguf`), and loaded with ``llama_adapter_lora_init`` next to the shared base weights.
llama.cpp applies adapters per *context* (``llama_set_adapters_lora``), not per sequence, so a call whose rows
name several adapters runs one batched decode loop per adapter (rows of one adapter still share the batch);
scoring sets the scoring context's adapter before each prompt. ``options.lora_path`` (one GGUF LoRA for every
call, no ``adapter=``) stays for adapters converted elsewhere.
"""

from __future__ import annotations

import bisect
import contextlib
import ctypes
import heapq
import os
import threading
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from .. import io
from ..config import Section
from ..errors import BackendError
from . import bundled, cpu
from .base import (
    AdapterArg,
    ConstraintArg,
    Generation,
    Prompt,
    SequenceLogprob,
    as_messages,
    check_generate_args,
    choice_variants,
    per_prompt_adapters,
    plain_text,
    renormalise,
    split_response_prefix,
    truncate_at_stop,
)
from .constraints import LOCAL_KINDS, check_supported, per_prompt_constraints


class LlamaCppOptions(Section):
    """Options of the llama.cpp backend.

    Fields:
        n_ctx: context window in tokens (prompt + completion); default 4096.
        n_threads: CPU threads for prompt and generation; ``None`` = half the logical CPUs (at least 1). llama.cpp
            threads spin-wait, so more threads than free cores is catastrophic on a shared machine (measured:
            75 s instead of 0.6 s for 32 tokens with 2 threads on 2 busy cores).
        n_batch: prompt tokens per decode call; default 512.
        n_gpu_layers: layers offloaded to a GPU build of llama.cpp; default 0.
        parallel: sequences ``generate`` decodes together (default 16); 1 = one at a time through llama-cpp-python's
            ``create_completion``. The batched context holds ``parallel × (longest prompt + max_new_tokens)`` KV
            cells, each sequence in its own stream (``n_ctx`` still bounds one sequence).
        lora_path: a GGUF LoRA adapter applied to every call (see the module docstring).
        adapters: LoRA adapters to load, ``{name: peft adapter folder or .gguf}``; select one per prompt with
            ``adapter=``. Peft folders are converted to GGUF once, into the user cache (by checksum).
        system_prompt: system message prepended to prompts that have none (default: the template's own).
        requantize: weight type to convert the GGUF to, once, into the user cache (``reasonrec.io.cache_dir()``):
            ``q8_0``, ``bf16``, ``f16``, ``f32`` or ``none`` (use the file as it is). ``auto`` (default) converts
            the bundled Q4_1 alias to ``bf16``, faster and closer to the fp32 model here (see the module docstring),
            and leaves other files alone: converting a large model up raises its memory traffic per token.
        extra_buffers: llama.cpp's extra CPU buffer types (``llama_model_params.use_extra_bufts``, where weights
            are repacked for the AMX and CPU-repack kernels): ``on``, ``off``, or ``auto`` (default) = off on a
            CPU with AMX, on elsewhere. Source: issue 12 — with them on, an AMX Xeon segfaults on the first
            decode of the bundled Q4_1 file and of its Q8_0 conversion (llama-cpp-python 0.3.36). See
            :func:`use_extra_buffers` for the rule and its cost.
    """

    n_ctx: int = 4096
    n_threads: int | None = None
    n_batch: int = 512
    n_gpu_layers: int = 0
    parallel: int = Field(16, ge=1, le=256)
    lora_path: Path | None = None
    adapters: dict[str, Path] = {}
    system_prompt: str | None = None
    requantize: Literal["auto", "none", "q8_0", "bf16", "f16", "f32"] = "auto"
    extra_buffers: Literal["auto", "on", "off"] = "auto"


_FTYPES = {"q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "bf16": "LLAMA_FTYPE_MOSTLY_BF16", "f16": "LLAMA_FTYPE_MOSTLY_F16",
           "f32": "LLAMA_FTYPE_ALL_F32"}


def requantized(path: Path, kind: str) -> Path:
    """``path`` converted to weight type ``kind`` with llama.cpp's quantizer, built once in the user cache."""
    import llama_cpp
    from llama_cpp._utils import suppress_stdout_stderr

    stat = path.stat()
    out = io.cache_dir() / "models" / f"{path.stem}.{stat.st_size}.{kind}.gguf"
    if out.exists():
        return out
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, _FTYPES[kind])
    params.allow_requantize = True  # the bundled file is already quantized (Q4_1)
    params.nthread = max(1, (os.cpu_count() or 2) // 2)
    with io.atomic_path(out) as tmp:  # raising inside discards the partial file
        with suppress_stdout_stderr(disable=False):
            code = llama_cpp.llama_model_quantize(str(path).encode(), str(tmp).encode(), ctypes.byref(params))
        if code != 0:
            raise BackendError(f"could not convert {path} to {kind} (llama_model_quantize returned {code})")
    return out


def amx_present() -> bool:
    """AMX on this CPU (its flags) or in this llama.cpp build (its system info: the only sign without /proc)."""
    if cpu.has_amx():
        return True
    try:
        import llama_cpp
    except ImportError:
        return False
    return "AMX_INT8 = 1" in llama_cpp.llama_print_system_info().decode(errors="replace")


def use_extra_buffers(setting: Literal["auto", "on", "off"]) -> bool:
    """Whether llama.cpp may place weights in its extra CPU buffer types (``use_extra_bufts``).

    ``auto`` turns them off where AMX is present, for every weight type: the crash of issue 12 is in the AMX path
    (the only extra buffer type that takes Q4_1 on x86; CPU-repack covers Q4_0, Q4_K, Q2_K, IQ4_NL and MXFP4 only),
    and on x86 no extra buffer type takes BF16, F32 or the BF16 conversion this backend reads by default, so off
    costs those nothing. What it does cost on an AMX CPU: the AMX and repacked kernels for the quantized types
    they cover (on this project's EPYC, without AMX, turning repacking off costs Q4_0 43% of its tokens/s; see the
    module docstring). Set ``on`` to have them back on a build where the crash is fixed.
    """
    if setting == "auto":
        return not amx_present()
    return setting == "on"


_MODEL_PARAMS_LOCK = threading.Lock()


@contextlib.contextmanager
def model_params(use_extra_bufts: bool) -> Iterator[None]:
    """Models loaded inside get ``use_extra_bufts`` in their ``llama_model_params``.

    ``llama_cpp.Llama(...)`` builds its model params from ``llama_model_default_params()`` and swallows keywords it
    does not know, so it has no argument for this field (llama-cpp-python 0.3.36); the defaults it reads are
    wrapped for the duration, under a lock (the wrap is module-wide). Callers check the loaded model's
    ``model_params`` (:func:`check_model_params`), so a llama-cpp-python that stops reading them fails loudly.
    """
    import llama_cpp.llama_cpp as lib

    if not hasattr(lib.llama_model_params, "use_extra_bufts"):
        if use_extra_bufts:  # llama.cpp before the field always used its extra buffer types
            yield
            return
        raise BackendError("llm.options.extra_buffers=off needs llama_model_params.use_extra_bufts, which "
                           f"llama-cpp-python {llama_cpp_version()} does not have; install the tested version: "
                           "pip install 'reasonrec[llamacpp]'")
    with _MODEL_PARAMS_LOCK:
        defaults = lib.llama_model_default_params

        def with_setting():
            params = defaults()
            params.use_extra_bufts = use_extra_bufts
            return params

        lib.llama_model_default_params = with_setting
        try:
            yield
        finally:
            lib.llama_model_default_params = defaults


def check_model_params(llm, use_extra_bufts: bool) -> None:
    """Raise if ``llm`` (a ``llama_cpp.Llama``) was not loaded with the wanted ``use_extra_bufts``."""
    got = getattr(llm.model_params, "use_extra_bufts", True)
    if got != use_extra_bufts:
        raise BackendError(f"llama-cpp-python {llama_cpp_version()} loaded {llm.model_path} with use_extra_bufts="
                           f"{got}, not {use_extra_bufts} (llm.options.extra_buffers); this version builds its "
                           "model params differently: install the tested version: pip install 'reasonrec[llamacpp]'")


def llama_cpp_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("llama-cpp-python")
    except PackageNotFoundError:
        return "(not installed)"


def resolve_gguf(name: str) -> Path:
    if name == bundled.SMOLLM2:
        return bundled.smollm2_gguf()
    path = Path(name).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return path
    raise BackendError(f"llama.cpp backend needs a .gguf file or the alias '{bundled.SMOLLM2}'; got '{name}'")


class LlamaCppLLM:
    """An :class:`~reasonrec.llm.base.LLM` on llama-cpp-python."""

    supports = frozenset({"generate", "choice_probs", "sequence_logprob", "adapters", "mixed_adapters",
                          *LOCAL_KINDS})

    def __init__(self, name: str, options: LlamaCppOptions | None = None):
        try:
            import llama_cpp  # noqa: F401
        except ImportError:
            raise BackendError("the llama.cpp backend needs llama-cpp-python: pip install 'reasonrec[llamacpp]'") \
                from None
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self.options = options or LlamaCppOptions()
        self.path = resolve_gguf(name)
        kind = self.options.requantize
        if kind == "auto":
            kind = "bf16" if name == bundled.SMOLLM2 else "none"
        if kind != "none":
            self.path = requantized(self.path, kind)
        self._contexts: list = []
        self._gen = self._open(logits_all=False)
        self._scorer = None
        self._batch_ctx = None  # (LlamaContext, n_seq, cells per sequence), opened by generate, grown on demand
        self._scored_prompt: tuple = ()  # (adapter, prompt ids) whose KV the scoring context holds
        self._loras: dict[str, tuple[object, str]] = {}  # name → (llama_adapter_lora pointer, adapter id)
        self._grammars = None  # GrammarSession over the GGUF vocabulary, built on the first constrained call
        # Close the contexts before interpreter teardown; llama-cpp-python's __del__ fails noisily after it.
        weakref.finalize(self, _close_all, self._contexts)
        meta = self._gen.metadata
        template = meta.get("tokenizer.chat_template")
        self._formatter = None
        if template:
            vocab = self._gen._model
            bos = vocab.token_get_text(int(meta.get("tokenizer.ggml.bos_token_id", vocab.token_bos())))
            eos = vocab.token_get_text(int(meta.get("tokenizer.ggml.eos_token_id", vocab.token_eos())))
            self._formatter = Jinja2ChatFormatter(template, eos_token=eos, bos_token=bos)
        lora = f":lora={self.options.lora_path.name}" if self.options.lora_path else ""
        self.model_id = f"llamacpp:{name}:{self.path.stat().st_size}{lora}"
        for adapter_name, adapter_path in self.options.adapters.items():
            self.load_adapter(adapter_name, adapter_path)

    # ------------------------------------------------------------------------------------------ adapters

    def load_adapter(self, name: str, path: str | os.PathLike) -> None:
        """Load a LoRA adapter (peft folder, converted once and cached, or a GGUF LoRA) under ``name``."""
        import llama_cpp

        from .base import BASE
        from .lora_gguf import gguf_adapter

        if name == BASE:
            raise BackendError(f"adapter name {BASE!r} is reserved for the base model")
        if self.options.lora_path:
            raise BackendError("llm.options.lora_path applies one LoRA to every call; use options.adapters only")
        converted = gguf_adapter(path, self.path)
        ptr = llama_cpp.llama_adapter_lora_init(self._gen._model.model, str(converted).encode())
        if not ptr:
            raise BackendError(f"llama.cpp could not load LoRA {converted} (converted from {path})")
        # The id is the converted file's name: it carries the adapter's checksum (see lora_gguf.gguf_adapter).
        self._loras[name] = (ptr, f"{name}@{converted.stem.rsplit('.', 1)[-1]}")

    @property
    def adapters(self) -> list[str]:
        return list(self._loras)

    def adapter_id(self, name: str | None) -> str:
        if name is None:
            return ""
        if name not in self._loras:
            raise BackendError(f"unknown adapter '{name}'; loaded adapters: {self.adapters or 'none'} "
                               "(add it to llm.options.adapters or call load_adapter)")
        return self._loras[name][1]

    def _attach(self, ctx, name: str | None) -> None:
        """Make ``ctx`` (a raw llama_context pointer) compute with adapter ``name`` only (None: the base model,
        or ``options.lora_path`` when set)."""
        import llama_cpp

        if self.options.lora_path:
            ptr, scale = self._gen._lora_adapter, self._gen.lora_scale
        elif name is None:
            ptr, scale = None, 1.0
        else:
            ptr, scale = self._loras[name][0], 1.0
        n = 0 if ptr is None else 1
        adapters = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(*([ptr] if n else []))
        if llama_cpp.llama_set_adapters_lora(ctx, adapters, n, (ctypes.c_float * 1)(scale)):
            raise BackendError(f"could not attach LoRA {name or self.options.lora_path} to a llama.cpp context")

    def _open(self, logits_all: bool):
        from llama_cpp import Llama

        kwargs = {"n_ctx": self.options.n_ctx, "n_batch": self.options.n_batch,
                  "n_gpu_layers": self.options.n_gpu_layers, "logits_all": logits_all, "verbose": False}
        threads = self.options.n_threads or max(1, (os.cpu_count() or 2) // 2)
        kwargs.update(n_threads=threads, n_threads_batch=threads)
        if self.options.lora_path:
            kwargs["lora_path"] = str(self.options.lora_path)
        extra = use_extra_buffers(self.options.extra_buffers)
        with model_params(use_extra_bufts=extra):
            llm = Llama(str(self.path), **kwargs)
        self._contexts.append(llm)
        check_model_params(llm, extra)
        return llm

    def format(self, prompt: Prompt) -> str:
        messages, prefix = split_response_prefix(as_messages(prompt, self.options.system_prompt))
        if self._formatter is None:
            return plain_text(messages, prefix)
        return self._formatter(messages=messages).prompt + prefix

    def encode_prompt(self, prompt: Prompt) -> list[int]:
        ids = self._gen.tokenize(self.format(prompt).encode("utf-8"), add_bos=True, special=True)
        if len(ids) >= self.options.n_ctx:
            raise BackendError(f"prompt has {len(ids)} tokens, more than llm.options.n_ctx={self.options.n_ctx}; "
                               "raise n_ctx or shorten the prompt")
        return ids

    def _check_adapter(self, adapter: AdapterArg, n: int) -> list[str | None]:
        adapters = per_prompt_adapters(adapter, n)
        for a in set(adapters):
            self.adapter_id(a)  # validates names up front
        if self.options.lora_path and any(a is not None for a in adapters):
            raise BackendError("llm.options.lora_path applies one LoRA to every call; per-call adapters need "
                               "llm.options.adapters instead")
        return adapters

    def generate(self, prompts: Sequence[Prompt], n: int = 1, temperature: float = 0.0, top_p: float = 1.0,
                 max_new_tokens: int = 256, stop: Sequence[str] | None = None, seed: int = 0,
                 adapter: AdapterArg = None, constraint: ConstraintArg = None) -> list[Generation]:
        check_generate_args(n, temperature, top_p, max_new_tokens)
        adapters = self._check_adapter(adapter, len(prompts))
        constraints = per_prompt_constraints(constraint, len(prompts))
        self.check_constraints(constraints)
        encoded = [self.encode_prompt(p) for p in prompts]
        if not encoded:
            return []
        constrained = any(c is not None for c in constraints)
        if self.options.parallel == 1 and not constrained and not any(adapters):
            # constrained rows and per-row adapters always take the batched loop
            return self._generate_sequential(encoded, n, temperature, top_p, max_new_tokens, stop, seed)
        rows = [_Row(p, s, ids, min(max_new_tokens, self.options.n_ctx - len(ids)))
                for p, ids in enumerate(encoded) for s in range(n)]
        if constrained:
            session = self.grammar_session()
            prefixes = [split_response_prefix(as_messages(p, self.options.system_prompt))[1] for p in prompts]
            for r in rows:
                if constraints[r.prompt] is not None:
                    r.matcher = session.matcher(constraints[r.prompt], prefixes[r.prompt], r.max_new)
        # llama.cpp sets adapters per context: one decode loop per adapter, in a fixed order (base first).
        for name in sorted(set(adapters), key=lambda a: (a is not None, a or "")):
            self._decode_rows([r for r in rows if adapters[r.prompt] == name], temperature, top_p,
                              list(s for s in stop or [] if s), seed, adapter=name)
        out = [Generation(texts=[""] * n, prompt_tokens=len(ids), completion_tokens=[0] * n) for ids in encoded]
        for r in rows:
            out[r.prompt].texts[r.sample] = r.text
            out[r.prompt].completion_tokens[r.sample] = len(r.tokens)
        return out

    def check_constraints(self, constraints) -> None:
        check_supported("llama.cpp", self.supports, constraints)

    def grammar_session(self):
        """The compiled-grammar cache over this GGUF's vocabulary: every token's bytes as llama.cpp detokenizes
        it (control tokens are empty, so a grammar never allows them; end-of-generation tokens stop a row)."""
        if self._grammars is None:
            import llama_cpp

            from .constraints import GrammarSession

            vocab = self._gen._model.vocab
            n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
            buf = ctypes.create_string_buffer(256)
            pieces = []
            for i in range(n_vocab):
                k = llama_cpp.llama_token_to_piece(vocab, i, buf, len(buf), 0, False)
                pieces.append(buf.raw[:k] if k > 0 else b"")
            stops = [i for i in range(n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, i)]
            self._grammars = GrammarSession.from_token_bytes(pieces, stops)
        return self._grammars

    def _generate_sequential(self, encoded: list[list[int]], n: int, temperature: float, top_p: float,
                             max_new_tokens: int, stop: Sequence[str] | None, seed: int) -> list[Generation]:
        out = []
        for ids in encoded:
            texts, counts = [], []
            for s in range(n):
                # Without a reset llama-cpp-python reuses the KV cache of a shared prefix, whose logits differ in
                # the last bits from a fresh prefill; greedy outputs would then depend on the previous call.
                # Samples 2..n of a prompt do reuse the prompt's KV (one prefill per prompt): what precedes them
                # is the same in every run, so they stay reproducible.
                if s == 0:
                    self._gen.reset()
                res = self._gen.create_completion(
                    ids, max_tokens=min(max_new_tokens, self.options.n_ctx - len(ids)), temperature=temperature,
                    top_p=top_p, top_k=0, min_p=0.0, repeat_penalty=1.0, seed=seed * 1000 + s,
                    stop=list(stop) if stop else [],
                )
                texts.append(truncate_at_stop(res["choices"][0]["text"], stop)[0])
                counts.append(int(res["usage"]["completion_tokens"]))
            out.append(Generation(texts=texts, prompt_tokens=len(ids), completion_tokens=counts))
        return out

    def _batch_context(self, n_seq: int, cells: int):
        """A generation context with ``n_seq`` KV streams of ``cells`` tokens each, reused while it is big enough."""
        import llama_cpp
        from llama_cpp._internals import LlamaContext

        if self._batch_ctx is not None:
            ctx, have_seq, have_cells = self._batch_ctx
            if have_seq >= n_seq and have_cells >= cells:
                llama_cpp.llama_memory_clear(ctx.memory, True)
                return ctx
            ctx.close()
            self._contexts.remove(ctx)
            n_seq, cells = max(n_seq, have_seq), max(cells, have_cells)
        cells = -(-cells // 256) * 256
        # The generation context's own settings (flash attention off, rope, threads ...) so that a row's logits
        # match what create_completion computes; only the sizes change.
        src = self._gen.context_params
        params = type(src).from_buffer_copy(src)
        params.n_ctx = n_seq * cells
        params.n_seq_max = n_seq
        params.kv_unified = False  # one stream per sequence: attention reads only the row's own cells
        params.n_batch = params.n_ubatch = max(self.options.n_batch, n_seq)
        ctx = LlamaContext(model=self._gen._model, params=params, verbose=False)
        self._contexts.insert(0, ctx)  # closed before the Llama objects that own the model
        self._batch_ctx = (ctx, n_seq, cells)
        return ctx

    @staticmethod
    def _decode(ctx, batch, n_running: int) -> None:
        import llama_cpp

        code = llama_cpp.llama_decode(ctx.ctx, batch)
        if code != 0:
            raise BackendError(f"llama_decode failed with code {code} ({n_running} sequences, {batch.n_tokens} "
                               "tokens in the batch); lower llm.options.parallel or n_batch")

    def _decode_rows(self, rows: list[_Row], temperature: float, top_p: float, stop: list[str], seed: int,
                     adapter: str | None = None) -> None:
        import llama_cpp
        from llama_cpp._internals import LlamaSampler

        n_seq = min(self.options.parallel, len(rows))
        ctx = self._batch_context(n_seq, max(len(r.ids) + r.max_new for r in rows))
        self._attach(ctx.ctx, adapter)
        n_batch = llama_cpp.llama_n_batch(ctx.ctx)
        vocab = self._gen._model.vocab
        n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
        batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        waiting = list(reversed(rows))
        free = list(range(n_seq))  # a min-heap: rows take the lowest free sequence id
        running: list[_Row] = []
        try:
            # Rows share their longest common token prefix (the system prompt and the template's opening, or a
            # whole prompt for its n samples): it is read once into sequence 0 and its KV copied to every other
            # stream, and a finished row gives back its cells after the prefix only. The last prompt token of each
            # row is always decoded by the row itself, to get its logits.
            shared = min(len(os.path.commonprefix([r.ids for r in rows])), min(len(r.ids) for r in rows) - 1)
            for start in range(0, shared, n_batch):
                batch.n_tokens = 0
                for pos in range(start, min(shared, start + n_batch)):
                    _add(batch, rows[0].ids[pos], pos, 0, False)
                self._decode(ctx, batch, 1)
            for seq in range(1, n_seq if shared else 1):
                llama_cpp.llama_memory_seq_cp(ctx.memory, 0, seq, -1, -1)
            for row in rows:
                row.n_past = shared
            while waiting or running:
                while waiting and free:
                    row = waiting.pop()
                    row.seq = heapq.heappop(free)
                    row.sampler = sampler = LlamaSampler()
                    if temperature == 0.0:
                        sampler.add_greedy()
                    else:  # Llama._init_sampler's chain with top_k, typical_p and min_p neutral
                        sampler.add_top_k(0)
                        sampler.add_typical(1.0, 1)
                        sampler.add_top_p(top_p, 1)
                        sampler.add_min_p(0.0, 1)
                        sampler.add_temp(temperature)
                        sampler.add_dist(seed * 1000 + row.sample)
                    bisect.insort(running, row, key=attrgetter("seq"))
                # llama.cpp splits a batch over separate KV streams into one compute step per run of consecutive
                # sequence ids (in batch order), so ``running`` stays sorted by sequence id, rows take the lowest
                # free ids, and once no row waits to fill the holes finished rows leave, the highest rows move down
                # (a stream copy costs ~1 ms, a hole ~12 ms per decode call).
                while not waiting and free and free[0] < running[-1].seq:
                    row, dst = running.pop(), heapq.heappop(free)
                    llama_cpp.llama_memory_seq_cp(ctx.memory, row.seq, dst, -1, -1)
                    llama_cpp.llama_memory_seq_rm(ctx.memory, row.seq, shared, -1)
                    heapq.heappush(free, row.seq)
                    row.seq = dst
                    bisect.insort(running, row, key=attrgetter("seq"))
                # One token of every decoding row first, then prompt chunks while the batch has room.
                batch.n_tokens = 0
                outputs = []
                for row in running:
                    if row.n_past >= len(row.ids) and row.tokens:
                        outputs.append((row, _add(batch, row.tokens[-1], row.n_past, row.seq, True)))
                        row.n_past += 1
                for row in running:
                    if row.n_past < len(row.ids) and batch.n_tokens < n_batch:
                        chunk = row.ids[row.n_past:row.n_past + n_batch - batch.n_tokens]
                        for k, tok in enumerate(chunk):
                            last = row.n_past + k == len(row.ids) - 1
                            idx = _add(batch, tok, row.n_past + k, row.seq, last)
                        row.n_past += len(chunk)
                        if row.n_past == len(row.ids):
                            outputs.append((row, idx))
                self._decode(ctx, batch, len(running))
                for row, idx in outputs:
                    if row.matcher is not None:
                        # The grammar's mask goes on the row's logits in place, before llama.cpp's sampler chain
                        # reads them, so temperature and top-p act on the allowed tokens only.
                        row.matcher.mask(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx.ctx, idx),
                                                               shape=(n_vocab,)))
                    tok = row.sampler.sample(ctx, idx)
                    if row.matcher is not None and not row.matcher.accept(tok):
                        raise BackendError(f"llama.cpp sampled token {tok}, which the constraint forbids; the "
                                           "sampler chain must not change the masked logits")
                    if llama_cpp.llama_vocab_is_eog(vocab, tok):
                        row.done = True
                        continue
                    row.tokens.append(tok)
                    # Decode the whole completion, as create_completion does: a multi-byte character may span tokens.
                    row.text = self._gen.detokenize(row.tokens, prev_tokens=row.ids).decode("utf-8", errors="ignore")
                    cut, hit = truncate_at_stop(row.text, stop)
                    if hit:
                        row.text, row.done = cut, True
                    elif len(row.tokens) >= row.max_new:
                        row.done = True
                for row in [r for r in running if r.done]:
                    llama_cpp.llama_memory_seq_rm(ctx.memory, row.seq, shared, -1)
                    row.sampler.close()
                    row.sampler = None
                    heapq.heappush(free, row.seq)
                    running.remove(row)
        finally:
            for row in running:
                if row.sampler is not None:
                    row.sampler.close()
            llama_cpp.llama_batch_free(batch)

    def _score(self, prompt_ids: list[int], completion_ids: list[int], adapter: str | None = None) -> list[float]:
        """log p(completion token t | prompt, tokens < t) for every completion token.

        The prompt is evaluated once and kept in the scoring context: scoring further completions of the same
        prompt (the variants of ``choice_probs``, chosen and rejected in DPO) only evaluates the completion, and a
        one-token completion needs no evaluation at all (its logits are the prompt's last row). The final
        completion token is never evaluated: nothing reads the logits after it.
        """
        if self._scorer is None:
            self._scorer = self._open(logits_all=True)
        llm = self._scorer
        if not self._loras:
            adapter = None  # lora_path (or nothing) was attached by Llama itself
        key = (adapter, tuple(prompt_ids))
        start = len(prompt_ids)
        if start + len(completion_ids) > self.options.n_ctx:
            raise BackendError(f"prompt + completion = {start + len(completion_ids)} tokens > "
                               f"llm.options.n_ctx={self.options.n_ctx}")
        if self._scored_prompt != key:
            if self._loras and (not self._scored_prompt or self._scored_prompt[0] != adapter):
                self._attach(llm._ctx.ctx, adapter)
            llm.reset()
            llm.eval(prompt_ids)
            self._scored_prompt = key
        llm.n_tokens = start  # drop the previous completion; llama.eval trims the KV cache from here
        if len(completion_ids) > 1:
            llm.eval(completion_ids[:-1])
        logits = np.asarray(llm.scores[start - 1:start - 1 + len(completion_ids)], dtype=np.float64)  # (T_c, V)
        logz = np.logaddexp.reduce(logits, axis=-1)
        return [float(logits[t, tok] - logz[t]) for t, tok in enumerate(completion_ids)]

    def _tokens(self, text: str) -> list[int]:
        return self._gen.tokenize(text.encode("utf-8"), add_bos=False, special=False)

    def choice_probs(self, prompts: Sequence[Prompt], choices: Sequence[str] = ("Yes", "No"),
                     adapter: AdapterArg = None) -> np.ndarray:
        if len(choices) < 2:
            raise BackendError(f"choice_probs needs at least two choices; got {list(choices)}")
        adapters = self._check_adapter(adapter, len(prompts))
        variants = []
        for c in choices:
            seqs = []
            for v in choice_variants(c):
                ids = self._tokens(v)
                if ids and ids not in seqs:
                    seqs.append(ids)
            variants.append(seqs)
        mass = np.zeros((len(prompts), len(choices)))
        for p, prompt in enumerate(prompts):
            ids = self.encode_prompt(prompt)
            for c, seqs in enumerate(variants):
                mass[p, c] = sum(np.exp(sum(self._score(ids, s, adapters[p]))) for s in seqs)
        return renormalise(mass)

    def sequence_logprob(self, prompts: Sequence[Prompt], completions: Sequence[str],
                         adapter: AdapterArg = None) -> list[SequenceLogprob]:
        if len(prompts) != len(completions):
            raise BackendError(f"sequence_logprob: {len(prompts)} prompts but {len(completions)} completions")
        adapters = self._check_adapter(adapter, len(prompts))
        out = []
        for prompt, completion, name in zip(prompts, completions, adapters, strict=True):
            comp = self._tokens(completion)
            logps = self._score(self.encode_prompt(prompt), comp, name) if comp else []
            tokens = [self._gen.detokenize([t]).decode("utf-8", errors="replace") for t in comp]
            out.append(SequenceLogprob(total=float(sum(logps)), token_logps=logps, tokens=tokens))
        return out


@dataclass(eq=False)
class _Row:
    """One sequence being generated: sample ``sample`` of prompt ``prompt``."""

    prompt: int
    sample: int
    ids: list[int]
    max_new: int
    seq: int = -1
    n_past: int = 0
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    done: bool = False
    sampler: object = None
    matcher: object = None  # RowMatcher of the row's constraint, or None


def _add(batch, token: int, pos: int, seq: int, logits: bool) -> int:
    """Append one token to a ``llama_batch``; returns its index (the row of its logits when ``logits``)."""
    i = batch.n_tokens
    batch.token[i] = token
    batch.pos[i] = pos
    batch.n_seq_id[i] = 1
    batch.seq_id[i][0] = seq
    batch.logits[i] = logits
    batch.n_tokens = i + 1
    return i


def _close_all(contexts: list) -> None:
    for llm in contexts:
        llm.close()
    contexts.clear()


def gguf_available() -> bool:
    """True when llama-cpp-python is importable and the bundled GGUF is installed (used by tests and benches)."""
    try:
        import llama_cpp  # noqa: F401

        bundled.smollm2_gguf()
    except (ImportError, BackendError):
        return False
    return os.environ.get("REASONREC_NO_LLAMACPP") is None
