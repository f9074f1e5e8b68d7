"""OpenAI-compatible HTTP backend: teacher models behind vLLM, llama.cpp (``python -m llama_cpp.server``),
Ollama or a hosted API.

- ``generate`` → ``POST /v1/chat/completions`` with ``n``; servers that ignore ``n`` (llama.cpp's) are asked
  again with ``seed + i`` until ``n`` texts are in hand.
- ``choice_probs`` → one-token chat completion with ``logprobs`` / ``top_logprobs``; a choice's mass is the
  sum over returned tokens equal to one of its variants (``"Yes"``, ``" Yes"``).
  DEVIATION: only the first token is visible through this API, so a multi-token choice is scored by its first
  token, and choices outside the top-k get zero mass (a row with no mass becomes uniform).
- ``sequence_logprob`` → ``POST /v1/completions`` with ``echo=True, logprobs`` on the chat-formatted prompt
  + completion; it needs ``options.tokenizer`` (a local model whose chat template renders the prompt exactly as
  the server does), because the server only scores raw text.
- ``generate(constraint=)`` (structured output): what the server enforces is declared by ``options.structured``,
  because an OpenAI-compatible server cannot be asked what it accepts. ``response_format`` (OpenAI's
  ``json_schema`` type) and ``json_object`` (``{"type": "json_object", "schema": ...}``, llama.cpp's server) enforce
  JSON schemas only; ``vllm`` sends regexes, choices, rankings and JSON schemas as
  vLLM's ``structured_outputs`` extra body (vLLM >= 0.12 removed the older fields), ``vllm_legacy`` as the
  ``guided_regex`` / ``guided_choice`` / ``guided_json`` fields of older vLLM servers; ``none`` enforces nothing.
  A constraint the server does not enforce is an error, or with ``unenforced: parse`` it is dropped, the answer goes
  through the caller's parse-and-retry path, and ``stats["unenforced"]`` counts the prompts (never silently).
  DEVIATION: vLLM enforces a :class:`~reasonrec.llm.constraints.Ranking` as its regex (line shape and candidate
  titles, but a title may repeat); the ranking parser drops repeats and appends missing candidates.

Retries with exponential backoff and the request timeout are the ``openai`` client's own (``max_retries``);
``max_concurrency`` requests run at once on a thread pool. The API key is read from the environment variable
named by ``api_key_env`` only — never from a config file.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import numpy as np

from ..config import Section
from ..data.sources import redact_url
from ..errors import BackendError
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
    renormalise,
    split_response_prefix,
    truncate_at_stop,
)
from .constraints import Constraint, JsonSchema, check_supported, per_prompt_constraints


class OpenAIOptions(Section):
    """Options of the OpenAI-compatible backend.

    Fields:
        model: model name sent to the server; default: the first model ``GET /v1/models`` lists.
        api_key_env: environment variable holding the API key (default ``OPENAI_API_KEY``; local servers accept
            any key, so a missing variable sends ``"EMPTY"``).
        max_concurrency: requests in flight at once; default 4.
        max_retries: retries with exponential backoff on connection errors, 408/409/429 and 5xx; default 5.
        timeout: seconds per request; default 120.
        top_logprobs: alternatives requested for ``choice_probs`` (OpenAI allows up to 20); default 20.
        tokenizer: a local model (alias, folder or HF id) whose chat template formats prompts for
            ``sequence_logprob``; ``None`` disables that call.
        system_prompt: system message prepended to prompts that have none.
        structured: how the server takes constraints (module docstring): ``response_format`` (default; JSON
            schemas), ``json_object`` (JSON schemas, llama.cpp's server), ``vllm`` (``structured_outputs``: regex, choice, ranking, JSON), ``vllm_legacy``
            (``guided_*`` fields of vLLM < 0.12) or ``none``.
        unenforced: a constraint the server cannot enforce is an ``error`` (default) or, with ``parse``, dropped
            and counted in ``stats["unenforced"]`` (the caller's parser and retries still apply).
    """

    model: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    max_concurrency: int = 4
    max_retries: int = 5
    timeout: float = 120.0
    top_logprobs: int = 20
    tokenizer: str | None = None
    system_prompt: str | None = None
    structured: Literal["response_format", "json_object", "vllm", "vllm_legacy", "none"] = "response_format"
    unenforced: Literal["error", "parse"] = "error"


_ENFORCED = {"response_format": {"json"}, "json_object": {"json"}, "vllm": {"regex", "choice", "json", "ranking"},
             "vllm_legacy": {"regex", "choice", "json", "ranking"}, "none": set()}


def structured_body(constraint: Constraint, mode: str) -> dict[str, Any]:
    """Request fields that make a server enforce ``constraint`` (``mode`` as ``OpenAIOptions.structured``)."""
    if mode in ("response_format", "json_object"):
        if not isinstance(constraint, JsonSchema):
            raise BackendError(f"structured={mode} takes JSON schemas only; got a {constraint.kind} constraint")
        if mode == "json_object":
            return {"response_format": {"type": "json_object", "schema": constraint.schema}}
        return {"response_format": {"type": "json_schema",
                                    "json_schema": {"name": "answer", "schema": constraint.schema, "strict": True}}}
    if constraint.kind == "json":
        spec: dict[str, Any] = {"json": constraint.schema}  # type: ignore[attr-defined]
    elif constraint.kind == "choice":
        spec = {"choice": list(constraint.options)}  # type: ignore[attr-defined]
    else:  # regex, ranking (its regex: see the DEVIATION in the module docstring)
        spec = {"regex": constraint.regex()}
    if mode == "vllm":
        return {"extra_body": {"structured_outputs": spec}}
    return {"extra_body": {f"guided_{k}": v for k, v in spec.items()}}


class OpenAICompatLLM:
    """An :class:`~reasonrec.llm.base.LLM` talking to an OpenAI-compatible server at ``base_url``."""

    def __init__(self, base_url: str, options: OpenAIOptions | None = None):
        from openai import OpenAI

        self.options = options or OpenAIOptions()
        url = base_url.rstrip("/")
        self.base_url = url if url.endswith("/v1") else url + "/v1"
        self.shown_url = redact_url(self.base_url)  # errors never echo credentials in the URL
        key = os.environ.get(self.options.api_key_env) or "EMPTY"
        self.client = OpenAI(base_url=self.base_url, api_key=key, max_retries=self.options.max_retries,
                             timeout=self.options.timeout)
        self.model = self.options.model or self._first_model()
        self.model_id = f"openai:{self.base_url}:{self.model}"
        self._tokenizer = None
        caps = {"generate", "choice_probs", *(f"constraint:{k}" for k in _ENFORCED[self.options.structured])}
        if self.options.tokenizer:
            caps.add("sequence_logprob")
        self.supports = frozenset(caps)
        self.stats = {"unenforced": 0}

    def check_constraints(self, constraints) -> None:
        if self.options.unenforced == "error":
            try:
                check_supported(f"OpenAI-compatible ({self.shown_url}, structured={self.options.structured})",
                                self.supports, constraints)
            except BackendError as err:
                raise BackendError(f"{err}; or set llm.options.structured to what the server takes, or "
                                   "llm.options.unenforced: parse to fall back to parse-and-retry") from None

    def _first_model(self) -> str:
        try:
            models = self.client.models.list().data
        except Exception as err:  # openai raises its own hierarchy; surface one clear error
            raise BackendError(f"cannot reach the OpenAI-compatible server at {self.shown_url}: {err}") from None
        if not models:
            raise BackendError(f"{self.shown_url}/models lists no model; set llm.options.model")
        return models[0].id

    def _map(self, fn, items: Sequence[Any]) -> list[Any]:
        with ThreadPoolExecutor(max_workers=max(1, self.options.max_concurrency)) as pool:
            return list(pool.map(fn, items))

    def _call(self, what: str, fn, **kwargs):
        try:
            return fn(**kwargs)
        except Exception as err:
            raise BackendError(f"{what} on {self.shown_url} (model {self.model}) failed after "
                               f"{self.options.max_retries} retries: {err}") from None

    def _check_adapter(self, adapter: AdapterArg, n: int) -> None:
        # vLLM serves LoRA adapters as extra model names; choose one with options.model instead.
        if any(a is not None for a in per_prompt_adapters(adapter, n)):
            raise BackendError("the OpenAI-compatible backend selects adapters by model name: set llm.options.model "
                               "to the adapter's served name")

    def _messages(self, prompt: Prompt) -> list[dict[str, str]]:
        messages = as_messages(prompt, self.options.system_prompt)
        if split_response_prefix(messages)[1]:  # chat APIs would read it as a finished turn, not a prefix
            raise BackendError("a response prefix (a chat ending with an assistant message) needs a local backend "
                               "(transformers, llama.cpp, vLLM); the OpenAI-compatible chat API cannot continue it")
        return messages

    def format(self, prompt: Prompt) -> Any:
        if self._tokenizer is not None:
            return self._render(prompt)
        return self._messages(prompt)

    def generate(self, prompts: Sequence[Prompt], n: int = 1, temperature: float = 0.0, top_p: float = 1.0,
                 max_new_tokens: int = 256, stop: Sequence[str] | None = None, seed: int = 0,
                 adapter: AdapterArg = None, constraint: ConstraintArg = None) -> list[Generation]:
        check_generate_args(n, temperature, top_p, max_new_tokens)
        self._check_adapter(adapter, len(prompts))
        constraints = per_prompt_constraints(constraint, len(prompts))
        self.check_constraints(constraints)
        bodies = []
        for c in constraints:
            if c is not None and f"constraint:{c.kind}" not in self.supports:
                self.stats["unenforced"] += 1  # unenforced: parse (check_constraints refused otherwise)
                c = None
            bodies.append(structured_body(c, self.options.structured) if c is not None else {})

        def one(job: tuple[Prompt, dict[str, Any]]) -> Generation:
            prompt, body = job
            texts: list[str] = []
            counts: list[int] = []
            prompt_tokens = 0
            attempt = 0
            while len(texts) < n:
                r = self._call("chat completion", self.client.chat.completions.create, model=self.model,
                               messages=self._messages(prompt), n=n - len(texts),
                               temperature=temperature, top_p=top_p, max_tokens=max_new_tokens,
                               stop=list(stop) if stop else None, seed=seed * 1000 + attempt, **body)
                attempt += 1
                usage = r.usage
                prompt_tokens = usage.prompt_tokens if usage else 0
                got = r.choices[: n - len(texts)]
                # usage is summed over the choices of one response; split it evenly.
                share = usage.completion_tokens // max(1, len(r.choices)) if usage else 0
                for ch in got:
                    texts.append(truncate_at_stop(ch.message.content or "", stop)[0])
                    counts.append(share)
                if attempt > 4 * n:
                    raise BackendError(f"{self.shown_url} returned no choices for a prompt after {attempt} requests")
            return Generation(texts=texts, prompt_tokens=prompt_tokens, completion_tokens=counts)

        return self._map(one, list(zip(prompts, bodies, strict=True)))

    def choice_probs(self, prompts: Sequence[Prompt], choices: Sequence[str] = ("Yes", "No"),
                     adapter: AdapterArg = None) -> np.ndarray:
        if len(choices) < 2:
            raise BackendError(f"choice_probs needs at least two choices; got {list(choices)}")
        self._check_adapter(adapter, len(prompts))
        variants = [choice_variants(c) for c in choices]

        def one(prompt: Prompt) -> list[float]:
            r = self._call("chat completion (logprobs)", self.client.chat.completions.create, model=self.model,
                           messages=self._messages(prompt), max_tokens=1, temperature=0.0,
                           logprobs=True, top_logprobs=self.options.top_logprobs)
            content = (r.choices[0].logprobs.content or []) if r.choices and r.choices[0].logprobs else []
            if not content:
                raise BackendError(f"{self.shown_url} returned no logprobs; the server must support "
                                   "logprobs/top_logprobs in chat completions for choice_probs")
            top = {t.token: t.logprob for t in content[0].top_logprobs}
            top.setdefault(content[0].token, content[0].logprob)
            # Multi-token choices: their first token (DEVIATION in the module docstring).
            mass = []
            for vs in variants:
                m = sum(math.exp(lp) for tok, lp in top.items() if tok in vs)
                if m == 0.0:
                    m = sum(math.exp(lp) for tok, lp in top.items()
                            if tok.strip() and any(v.startswith(tok) and len(tok.strip()) > 1 for v in vs))
                mass.append(m)
            return mass

        return renormalise(np.array(self._map(one, list(prompts)), dtype=np.float64).reshape(len(prompts), -1))

    def _render(self, prompt: Prompt) -> str:
        if self._tokenizer is None:
            if not self.options.tokenizer:
                raise BackendError("sequence_logprob over HTTP needs llm.options.tokenizer: a local model whose chat "
                                   "template matches the server's (e.g. 'smollm2-135m')")
            from transformers import AutoTokenizer

            from .hf import resolve_model_path

            self._tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(self.options.tokenizer),
                                                            local_files_only=True)
        return self._tokenizer.apply_chat_template(self._messages(prompt), tokenize=False,
                                                   add_generation_prompt=True)

    def sequence_logprob(self, prompts: Sequence[Prompt], completions: Sequence[str],
                         adapter: AdapterArg = None) -> list[SequenceLogprob]:
        if len(prompts) != len(completions):
            raise BackendError(f"sequence_logprob: {len(prompts)} prompts but {len(completions)} completions")
        self._check_adapter(adapter, len(prompts))
        texts = [self._render(p) for p in prompts]

        def one(i: int) -> SequenceLogprob:
            if not completions[i]:
                return SequenceLogprob(total=0.0, token_logps=[], tokens=[])
            r = self._call("completion (echo logprobs)", self.client.completions.create, model=self.model,
                           prompt=texts[i] + completions[i], max_tokens=1, temperature=0.0, echo=True, logprobs=0)
            lp = r.choices[0].logprobs
            if lp is None or lp.token_logprobs is None or not lp.tokens:
                raise BackendError(f"{self.shown_url} does not return echoed prompt logprobs; sequence_logprob needs "
                                   "a server that supports echo=True with logprobs (vLLM, llama.cpp)")
            # Servers disagree on text offsets (llama.cpp counts without special tokens), so locate the
            # completion in the concatenated echoed tokens (its last occurrence).
            offsets, pos = [], 0
            for tok in lp.tokens:
                offsets.append(pos)
                pos += len(tok)
            joined = "".join(lp.tokens)
            start = joined.rfind(completions[i])
            if start < 0:
                raise BackendError(f"cannot locate the completion in the echoed tokens from {self.shown_url}")
            end = start + len(completions[i])
            sel = [k for k, off in enumerate(offsets) if start <= off < end]
            logps = [float(lp.token_logprobs[k]) for k in sel]
            return SequenceLogprob(total=float(sum(logps)), token_logps=logps, tokens=[lp.tokens[k] for k in sel])

        return self._map(one, list(range(len(prompts))))
