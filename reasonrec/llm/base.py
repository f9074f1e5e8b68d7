"""The one LLM interface every method talks to, and :func:`load_llm`, which turns a model name into a backend.

Three calls cover what the four methods need (ARCHITECTURE.md, "The LLM interface"):

- :meth:`LLM.generate` — reasons, reflections, CoTs (TrackRec's N-sampling: ``n=10, temperature=1, top_p=0.9``),
  rankings and memories; batched, ``n`` samples per prompt, token counts returned.
- :meth:`LLM.choice_probs` — next-token probabilities renormalised over a few answers, e.g. ``("Yes", "No")``:
  TrackRec's validator reward, ThinkRec's score, TALLRec's AUC. A choice's probability is the sum over its
  surface variants (``"Yes"``, ``" Yes"``) of the probability of the variant's whole token sequence, so
  multi-token choices are exact on backends that can score sequences.
- :meth:`LLM.sequence_logprob` — summed and per-token log-probabilities of completions (DPO, reference models).

A *prompt* is a string (one user message) or a list of chat messages ``{"role", "content"}``; backends apply the
model's chat template. ``adapter`` names a LoRA adapter (or ``None`` for the base model); a list gives one adapter
per prompt, which the transformers backend runs as one mixed batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from ..config import Section, validate
from ..errors import BackendError, ConfigError
from .constraints import ConstraintArg

Message = Mapping[str, str]
Prompt = str | Sequence[Message]
AdapterArg = str | None | Sequence[str | None]
BASE = "__base__"  # peft's name for "no adapter" in a mixed batch


@dataclass
class Generation:
    """The ``n`` completions of one prompt.

    texts: the ``n`` sampled completions (stop strings removed).
    prompt_tokens: tokens in the formatted prompt.
    completion_tokens: tokens generated for each text.
    cached: how many of the texts came from the generation cache (0 if uncached).
    """

    texts: list[str]
    prompt_tokens: int = 0
    completion_tokens: list[int] = field(default_factory=list)
    cached: int = 0

    @property
    def text(self) -> str:
        return self.texts[0]


@dataclass
class SequenceLogprob:
    """Log-probability of one completion given its prompt: ``total`` = sum of ``token_logps``."""

    total: float
    token_logps: list[float]
    tokens: list[str]


@runtime_checkable
class LLM(Protocol):
    """What every backend offers. ``model_id`` identifies the weights (and options that change outputs) for the
    generation cache; ``supports`` lists the calls the backend can answer (all three for local backends) and the
    constraints it enforces while decoding (``constraint:regex``, ``constraint:json``, ``constraint:choice``,
    ``constraint:ranking``; see :mod:`reasonrec.llm.constraints`).

    ``generate(..., constraint=)`` takes one constraint for every prompt or one (or ``None``) per prompt; a
    constraint the backend cannot enforce is a :class:`~reasonrec.errors.BackendError` before any work."""

    model_id: str
    supports: frozenset[str]

    def generate(self, prompts: Sequence[Prompt], n: int = 1, temperature: float = 0.0, top_p: float = 1.0,
                 max_new_tokens: int = 256, stop: Sequence[str] | None = None, seed: int = 0,
                 adapter: AdapterArg = None, constraint: ConstraintArg = None) -> list[Generation]: ...

    def choice_probs(self, prompts: Sequence[Prompt], choices: Sequence[str] = ("Yes", "No"),
                     adapter: AdapterArg = None) -> np.ndarray: ...

    def sequence_logprob(self, prompts: Sequence[Prompt], completions: Sequence[str],
                         adapter: AdapterArg = None) -> list[SequenceLogprob]: ...


# ---------------------------------------------------------------------------------------------- helpers shared

def as_messages(prompt: Prompt, system_prompt: str | None = None) -> list[dict[str, str]]:
    """A prompt as a chat: a string becomes one user message; ``system_prompt`` is prepended if none is given."""
    if isinstance(prompt, str):
        messages = [{"role": "user", "content": prompt}]
    elif isinstance(prompt, Sequence) and all(isinstance(m, Mapping) for m in prompt):
        messages = []
        for i, m in enumerate(prompt):
            if "role" not in m or "content" not in m:
                raise BackendError(f"prompt message {i} needs 'role' and 'content' keys; got keys {sorted(m)}")
            messages.append({"role": str(m["role"]), "content": str(m["content"])})
    else:
        raise BackendError(f"a prompt is a str or a list of {{'role', 'content'}} dicts; got {type(prompt).__name__}")
    if system_prompt and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system_prompt})
    return messages


def split_response_prefix(messages: list[dict[str, str]]) -> tuple[list[dict[str, str]], str]:
    """A chat whose last message is the assistant's is a *response prefix* (priming): the model continues that
    text instead of starting a new turn. Returns the chat without it and the prefix ("" when there is none).
    Generated texts exclude the prefix."""
    if len(messages) > 1 and messages[-1]["role"] == "assistant":
        return messages[:-1], messages[-1]["content"]
    return messages, ""


def chat_text(tokenizer, prompt: Prompt, system_prompt: str | None = None, template: bool = True) -> str:
    """The text a model sees: the tokenizer's chat template with the generation prompt (plain paragraphs when
    there is no template), followed by the response prefix if the chat has one."""
    messages, prefix = split_response_prefix(as_messages(prompt, system_prompt))
    if template and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + prefix
    return plain_text(messages, prefix)


def plain_text(messages: list[dict[str, str]], prefix: str = "") -> str:
    """A chat for a model without a chat template: the contents as paragraphs, then the response prefix."""
    return "\n\n".join([m["content"] for m in messages] + ([prefix] if prefix else []))


def per_prompt(value: Any, n_prompts: int, single: type | tuple[type, ...], what: str) -> list:
    """``value`` for each prompt: one value (an instance of ``single``, or ``None``) for all, or a list of one per
    prompt (adapters, constraints)."""
    if value is None or isinstance(value, single):
        return [value] * n_prompts
    out = list(value)
    if len(out) != n_prompts:
        raise BackendError(f"{what} list has {len(out)} entries for {n_prompts} prompts; give one per prompt")
    return out


def per_prompt_adapters(adapter: AdapterArg, n_prompts: int) -> list[str | None]:
    return per_prompt(adapter, n_prompts, str, "adapter")


def choice_variants(choice: str) -> list[str]:
    """Surface forms that count as answering ``choice``: as is, and with a leading space (tokenizers such as
    SmolLM2's BPE encode ``"Yes"`` and ``" Yes"`` as different tokens; which one follows a prompt depends on
    whether the prompt ends in a space or a newline)."""
    c = choice.strip()
    if not c:
        raise BackendError(f"empty choice {choice!r}; choices must contain text")
    return [c, " " + c]


def truncate_at_stop(text: str, stop: Sequence[str] | None) -> tuple[str, bool]:
    """Cut ``text`` at the first stop string (backends that stop on token boundaries may overshoot)."""
    if not stop:
        return text, False
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def check_generate_args(n: int, temperature: float, top_p: float, max_new_tokens: int) -> None:
    if n < 1:
        raise BackendError(f"generate: n must be >= 1; got {n}")
    if n > 1 and temperature == 0.0:
        raise BackendError(f"generate: n={n} samples with temperature=0 would be {n} identical greedy texts; "
                           "set temperature > 0 (TrackRec uses 1.0) or n=1")
    if temperature < 0 or not 0 < top_p <= 1:
        raise BackendError(f"generate: need temperature >= 0 and 0 < top_p <= 1; got {temperature}, {top_p}")
    if max_new_tokens < 1:
        raise BackendError(f"generate: max_new_tokens must be >= 1; got {max_new_tokens}")


def renormalise(mass: np.ndarray) -> np.ndarray:
    """Rows of non-negative choice masses → probabilities. A row with no mass at all (every choice outside a
    server's top-k) becomes uniform: the model expressed no preference among the choices."""
    mass = np.asarray(mass, dtype=np.float64)
    total = mass.sum(axis=1, keepdims=True)
    uniform = np.full_like(mass, 1.0 / mass.shape[1])
    with np.errstate(invalid="ignore", divide="ignore"):
        probs = np.where(total > 0, mass / np.where(total > 0, total, 1.0), uniform)
    return probs


# ---------------------------------------------------------------------------------------------- loading

Backend = Literal["auto", "transformers", "openai", "llamacpp", "vllm"]


class LLMSection(Section):
    """The ``llm:`` block of an experiment config.

    Fields:
        name: a bundled alias (``smollm2-135m``, ``tiny-random``), a local folder (transformers) or ``.gguf``
            file (llama.cpp), a Hugging Face id in the local cache, or an ``http(s)://`` endpoint
            (OpenAI-compatible server). Default ``smollm2-135m``.
        backend: ``auto`` picks by ``name`` (URL → openai, ``.gguf`` → llamacpp, otherwise transformers).
        cache: SQLite file of the generation cache; ``None`` disables caching.
        options: backend options, validated by the backend's own section (see ``reasonrec llm --help``).
    """

    name: str = "smollm2-135m"
    backend: Backend = "auto"
    cache: Path | None = None
    options: dict[str, Any] = {}


def resolve_backend(name: str, backend: Backend = "auto") -> str:
    if backend != "auto":
        return backend
    if name.startswith(("http://", "https://")):
        return "openai"
    if name.endswith(".gguf"):
        return "llamacpp"
    return "transformers"


def load_llm(name: str = "smollm2-135m", backend: Backend = "auto", cache: str | Path | None = None,
             **options: Any) -> LLM:
    """Load a model by name and return an :class:`LLM`; with ``cache`` every call goes through the persistent
    generation cache (:class:`reasonrec.llm.cache.CachedLLM`). Under ``engine: ray``
    (:func:`reasonrec.llm.engine.use_engine`) the model is loaded on Ray workers instead
    (:class:`reasonrec.llm.ray_engine.RayBackend`).

    ``options`` are validated against the chosen backend's options section (unknown keys are errors naming the
    closest valid key): :class:`~reasonrec.llm.hf.TransformersOptions`,
    :class:`~reasonrec.llm.openai_http.OpenAIOptions`, :class:`~reasonrec.llm.llamacpp.LlamaCppOptions`,
    :class:`~reasonrec.llm.vllm_backend.VLLMOptions`.
    """
    kind = resolve_backend(name, backend)
    if kind == "transformers":
        from .hf import TransformersLLM as cls
        from .hf import TransformersOptions as opts
    elif kind == "openai":
        from .openai_http import OpenAICompatLLM as cls
        from .openai_http import OpenAIOptions as opts
    elif kind == "llamacpp":
        from .llamacpp import LlamaCppLLM as cls
        from .llamacpp import LlamaCppOptions as opts
    elif kind == "vllm":
        from .vllm_backend import VLLMBackend as cls
        from .vllm_backend import VLLMOptions as opts
    else:  # pragma: no cover - Literal guards this
        raise ConfigError(f"llm.backend: unknown backend {kind!r}")
    checked = validate(opts, options, source=f"llm.options ({kind} backend)")
    from .engine import current_engine

    engine = current_engine()
    if engine.kind == "ray":  # one replica per Ray actor; the cache below shards every call over them
        from .ray_engine import RayBackend

        llm: LLM = RayBackend(name, kind, checked.model_dump(exclude_unset=True), engine)
    else:
        llm = cls(name, checked)
    if cache is not None:
        from .cache import CachedLLM

        llm = CachedLLM(llm, cache)
    return llm


def load_llm_section(section: LLMSection) -> LLM:
    return load_llm(section.name, backend=section.backend, cache=section.cache, **section.options)
