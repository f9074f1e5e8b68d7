"""The llama.cpp backend (``pip install 'reasonrec[llamacpp]'``): GGUF models on CPU, the fast single-stream path.

Prompts are rendered with the chat template stored in the GGUF (``tokenizer.chat_template``, via
llama-cpp-python's ``Jinja2ChatFormatter``) and tokenized once, so ``generate``, ``choice_probs`` and
``sequence_logprob`` all see exactly the same tokens. Sampling uses llama.cpp's sampler with ``top_k`` and
``min_p`` disabled and no repetition penalty, so ``temperature``/``top_p`` mean what they mean in transformers.

Scoring needs logits at every position (``logits_all=True``), which costs an extra ``n_ctx × vocab`` buffer and
slows prefill, so a second context that shares nothing but the file is opened lazily for scoring only.

DEVIATION: llama.cpp applies LoRA adapters (GGUF-converted) at load time, one per model instance, so this
backend does not take ``adapter=`` per call; load the adapter as ``options.lora_path`` instead.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..config import Section
from ..errors import BackendError
from . import bundled
from .base import (
    AdapterArg,
    Generation,
    Prompt,
    SequenceLogprob,
    as_messages,
    check_generate_args,
    choice_variants,
    per_prompt_adapters,
    renormalise,
    split_response_prefix,
    truncate_at_stop,
)


class LlamaCppOptions(Section):
    """Options of the llama.cpp backend.

    Fields:
        n_ctx: context window in tokens (prompt + completion); default 4096.
        n_threads: CPU threads for prompt and generation; ``None`` = half the logical CPUs (at least 1). llama.cpp
            threads spin-wait, so more threads than free cores is catastrophic on a shared machine (measured:
            75 s instead of 0.6 s for 32 tokens with 2 threads on 2 busy cores).
        n_batch: prompt tokens per decode call; default 512.
        n_gpu_layers: layers offloaded to a GPU build of llama.cpp; default 0.
        lora_path: a GGUF LoRA adapter applied at load time (see the module docstring).
        system_prompt: system message prepended to prompts that have none (default: the template's own).
    """

    n_ctx: int = 4096
    n_threads: int | None = None
    n_batch: int = 512
    n_gpu_layers: int = 0
    lora_path: Path | None = None
    system_prompt: str | None = None


def resolve_gguf(name: str) -> Path:
    if name == bundled.SMOLLM2:
        return bundled.smollm2_gguf()
    path = Path(name).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return path
    raise BackendError(f"llama.cpp backend needs a .gguf file or the alias '{bundled.SMOLLM2}'; got '{name}'")


class LlamaCppLLM:
    """An :class:`~reasonrec.llm.base.LLM` on llama-cpp-python."""

    supports = frozenset({"generate", "choice_probs", "sequence_logprob"})

    def __init__(self, name: str, options: LlamaCppOptions | None = None):
        try:
            import llama_cpp  # noqa: F401
        except ImportError:
            raise BackendError("the llama.cpp backend needs llama-cpp-python: pip install 'reasonrec[llamacpp]'") \
                from None
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self.options = options or LlamaCppOptions()
        self.path = resolve_gguf(name)
        self._contexts: list = []
        self._gen = self._open(logits_all=False)
        self._scorer = None
        self._scored_prompt: tuple[int, ...] = ()  # prompt whose KV the scoring context holds
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

    def _open(self, logits_all: bool):
        from llama_cpp import Llama

        kwargs = {"n_ctx": self.options.n_ctx, "n_batch": self.options.n_batch,
                  "n_gpu_layers": self.options.n_gpu_layers, "logits_all": logits_all, "verbose": False}
        threads = self.options.n_threads or max(1, (os.cpu_count() or 2) // 2)
        kwargs.update(n_threads=threads, n_threads_batch=threads)
        if self.options.lora_path:
            kwargs["lora_path"] = str(self.options.lora_path)
        llm = Llama(str(self.path), **kwargs)
        self._contexts.append(llm)
        return llm

    def format(self, prompt: Prompt) -> str:
        messages, prefix = split_response_prefix(as_messages(prompt, self.options.system_prompt))
        if self._formatter is None:
            return "\n\n".join(m["content"] for m in messages) + ("\n\n" + prefix if prefix else "")
        return self._formatter(messages=messages).prompt + prefix

    def encode_prompt(self, prompt: Prompt) -> list[int]:
        ids = self._gen.tokenize(self.format(prompt).encode("utf-8"), add_bos=True, special=True)
        if len(ids) >= self.options.n_ctx:
            raise BackendError(f"prompt has {len(ids)} tokens, more than llm.options.n_ctx={self.options.n_ctx}; "
                               "raise n_ctx or shorten the prompt")
        return ids

    def _check_adapter(self, adapter: AdapterArg, n: int) -> None:
        if any(a is not None for a in per_prompt_adapters(adapter, n)):
            raise BackendError("the llama.cpp backend applies one LoRA at load time (llm.options.lora_path); "
                               "per-call adapters need the transformers or vLLM backend")

    def generate(self, prompts: Sequence[Prompt], n: int = 1, temperature: float = 0.0, top_p: float = 1.0,
                 max_new_tokens: int = 256, stop: Sequence[str] | None = None, seed: int = 0,
                 adapter: AdapterArg = None) -> list[Generation]:
        check_generate_args(n, temperature, top_p, max_new_tokens)
        self._check_adapter(adapter, len(prompts))
        out = []
        for prompt in prompts:
            ids = self.encode_prompt(prompt)
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

    def _score(self, prompt_ids: list[int], completion_ids: list[int]) -> list[float]:
        """log p(completion token t | prompt, tokens < t) for every completion token.

        The prompt is evaluated once and kept in the scoring context: scoring further completions of the same
        prompt (the variants of ``choice_probs``, chosen and rejected in DPO) only evaluates the completion, and a
        one-token completion needs no evaluation at all (its logits are the prompt's last row). The final
        completion token is never evaluated: nothing reads the logits after it.
        """
        if self._scorer is None:
            self._scorer = self._open(logits_all=True)
        llm = self._scorer
        start = len(prompt_ids)
        if start + len(completion_ids) > self.options.n_ctx:
            raise BackendError(f"prompt + completion = {start + len(completion_ids)} tokens > "
                               f"llm.options.n_ctx={self.options.n_ctx}")
        if self._scored_prompt != tuple(prompt_ids):
            llm.reset()
            llm.eval(prompt_ids)
            self._scored_prompt = tuple(prompt_ids)
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
        self._check_adapter(adapter, len(prompts))
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
                mass[p, c] = sum(np.exp(sum(self._score(ids, s))) for s in seqs)
        return renormalise(mass)

    def sequence_logprob(self, prompts: Sequence[Prompt], completions: Sequence[str],
                         adapter: AdapterArg = None) -> list[SequenceLogprob]:
        if len(prompts) != len(completions):
            raise BackendError(f"sequence_logprob: {len(prompts)} prompts but {len(completions)} completions")
        self._check_adapter(adapter, len(prompts))
        out = []
        for prompt, completion in zip(prompts, completions, strict=True):
            comp = self._tokens(completion)
            logps = self._score(self.encode_prompt(prompt), comp) if comp else []
            tokens = [self._gen.detokenize([t]).decode("utf-8", errors="replace") for t in comp]
            out.append(SequenceLogprob(total=float(sum(logps)), token_logps=logps, tokens=tokens))
        return out


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
