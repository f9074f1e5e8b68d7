"""Refill-finished-slots decoding for the transformers backend (``TransformersOptions.scheduler: refill``).

``model.generate`` on a static batch keeps a finished row in the batch until the longest row ends: with 128 new
tokens and answers of 40-128 tokens a third of the row-steps of a batch can be wasted. This loop keeps up to
``batch_size`` rows running over one KV cache; a row that ends (end-of-sequence, ``max_new_tokens``, a stop string)
leaves the cache at once, and when a quarter of the slots are free the next waiting rows (by prompt length) are
read in one left-padded prefill and their KV joined to the running cache (left-padded to a common length; the
attention mask hides the padding, and position ids count each row's own tokens, so padding never shifts a row).
Leading cache columns that no row uses any more are cut off.

Per row, as in the static path: its LoRA adapter (peft's mixed batch, ``adapter_names``), its constraint
(a :class:`~reasonrec.llm.constraints.RowMatcher` masking the logits before temperature and top-p), greedy or
sampled. Sampling draws from one ``torch.Generator`` per row, seeded from the caller's seed, the row's tokens and
its sample index, so a row samples the same text whatever batch it runs in.

Only the cache API every decoder-only model in transformers shares is used (``DynamicCache.update`` to build a
cache, ``cache.layers[i].keys / .values`` to read it): models with sliding-window or static caches take the static
path (``scheduler: static``).
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..errors import BackendError
from .base import truncate_at_stop


@dataclass(eq=False)
class Row:
    """One generated row: its prompt ids, adapter (None = base), constraint and seed; ``new`` collects tokens."""

    ids: list[int]
    adapter: str | None = None
    matcher: object = None
    seed: int = 0
    new: list[int] = field(default_factory=list)
    done: bool = False
    generator: object = None


def row_seed(seed: int, ids: list[int], sample: int) -> int:
    digest = hashlib.sha256(f"{seed}|{sample}|{ids}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _cache_layers(cache) -> list[tuple]:
    return [(layer.keys, layer.values) for layer in cache.layers]


def _cache_arg(model) -> str:
    """The forward keyword of the KV cache: ``cache`` in recent transformers 5.x, ``past_key_values`` before."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(type(base).forward).parameters else "past_key_values"


def _build_cache(layers: list[tuple]):
    from transformers import DynamicCache

    cache = DynamicCache()
    for i, (k, v) in enumerate(layers):
        cache.update(k, v, i)
    return cache


def _left_pad(t, width: int, dim: int):
    import torch.nn.functional as F

    missing = width - t.shape[dim]
    if missing == 0:
        return t
    pad = [0, 0] * (t.dim() - 1 - dim) + [missing, 0]  # F.pad lists the last dimension first
    return F.pad(t, pad)


class RefillDecoder:
    """The decode loop of one ``generate`` call (see the module docstring)."""

    def __init__(self, model, pad_id: int, eos_ids: set[int], batch_size: int, adapter_kwargs, decode_text=None):
        self.model = model
        self.pad_id = pad_id
        self.eos_ids = eos_ids
        self.batch_size = max(1, batch_size)
        self.adapter_kwargs = adapter_kwargs  # list[str | None] → forward kwargs (peft adapter_names)
        self.decode_text = decode_text  # token ids → text, for stop strings
        self.cache_arg = _cache_arg(model)
        self.steps = 0  # forward calls, for tests and benchmarks
        self.row_steps = 0  # rows computed over all calls

    # ---------------------------------------------------------------------------------------------- forward

    def _forward(self, ids, mask, position_ids, cache, adapters):
        import torch

        with torch.inference_mode():
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=position_ids, use_cache=True,
                             logits_to_keep=1, **{self.cache_arg: cache}, **self.adapter_kwargs(adapters))
        self.steps += 1
        self.row_steps += ids.shape[0]
        cache = getattr(out, "cache", None)
        return out.logits[:, -1].float(), out.past_key_values if cache is None else cache

    def _prefill(self, rows: list[Row]):
        import torch

        device = next(self.model.parameters()).device
        width = max(len(r.ids) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, width - len(r.ids):] = torch.tensor(r.ids)
            mask[i, width - len(r.ids):] = 1
        ids, mask = ids.to(device), mask.to(device)
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        from transformers import DynamicCache

        logits, cache = self._forward(ids, mask, position_ids, DynamicCache(), [r.adapter for r in rows])
        return logits, cache, mask

    # ---------------------------------------------------------------------------------------------- tokens

    def _pick(self, rows: list[Row], logits, temperature: float, top_p: float) -> None:
        """Choose each row's next token from its logits (B, V); mark rows that end."""
        import torch

        for i, r in enumerate(rows):
            scores = logits[i]
            if r.matcher is not None:
                row = scores.cpu().numpy().copy()
                r.matcher.mask(row)
                scores = torch.from_numpy(row).to(logits.device)
            if temperature == 0.0:
                tok = int(torch.argmax(scores))
            else:
                probs = torch.softmax(scores / temperature, -1)
                if top_p < 1.0:
                    sorted_p, order = torch.sort(probs, descending=True)
                    keep = sorted_p.cumsum(-1) - sorted_p < top_p  # the nucleus, always its first token
                    probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
                if r.generator is None:
                    r.generator = torch.Generator(device=logits.device).manual_seed(r.seed)
                tok = int(torch.multinomial(probs, 1, generator=r.generator))
            if r.matcher is not None and not r.matcher.accept(tok):
                raise BackendError(f"sampled token {tok}, which the constraint forbids (the mask must hold)")
            r.new.append(tok)
            if tok in self.eos_ids or len(r.new) >= self.max_new:
                r.done = True
            elif self.stop and truncate_at_stop(self.decode_text(r.new), self.stop)[1]:
                r.done = True

    # ---------------------------------------------------------------------------------------------- loop

    def run(self, rows: Sequence[Row], max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
            stop: Sequence[str] | None = None) -> list[list[int]]:
        """Decode every row; returns each row's new ids, up to and including its end-of-sequence token."""
        import torch

        self.max_new, self.stop = max_new_tokens, [s for s in stop or [] if s]
        order = sorted(range(len(rows)), key=lambda i: len(rows[i].ids))
        waiting = deque(rows[i] for i in order)
        active: list[Row] = []
        cache, mask = None, None
        refill_at = max(1, self.batch_size // 4)
        while waiting or active:
            if waiting and (not active or self.batch_size - len(active) >= refill_at):
                admitted = [waiting.popleft() for _ in range(min(len(waiting), self.batch_size - len(active)))]
                logits, new_cache, new_mask = self._prefill(admitted)
                self._pick(admitted, logits, temperature, top_p)
                if active:
                    width = max(mask.shape[1], new_mask.shape[1])
                    cache = _build_cache([
                        (torch.cat([_left_pad(k, width, 2), _left_pad(k2, width, 2)]),
                         torch.cat([_left_pad(v, width, 2), _left_pad(v2, width, 2)]))
                        for (k, v), (k2, v2) in zip(_cache_layers(cache), _cache_layers(new_cache), strict=True)])
                    mask = torch.cat([_left_pad(mask, width, 1), _left_pad(new_mask, width, 1)])
                else:
                    cache, mask = new_cache, new_mask
                active += admitted
            else:
                # Each running row has one token not yet in the cache: its last one.
                ids = torch.tensor([[r.new[-1]] for r in active], device=mask.device)
                position_ids = torch.tensor([[len(r.ids) + len(r.new) - 1] for r in active], device=mask.device)
                mask = torch.cat([mask, torch.ones((len(active), 1), dtype=mask.dtype, device=mask.device)], 1)
                logits, cache = self._forward(ids, mask, position_ids, cache, [r.adapter for r in active])
                self._pick(active, logits, temperature, top_p)
            if any(r.done for r in active):
                keep = [i for i, r in enumerate(active) if not r.done]
                active = [active[i] for i in keep]
                if active:
                    idx = torch.tensor(keep, device=mask.device)
                    mask = mask[idx]
                    first = int((mask.sum(0) > 0).nonzero()[0])  # columns before it belong to no running row
                    mask = mask[:, first:]
                    cache = _build_cache([(k[idx][:, :, first:], v[idx][:, :, first:])
                                          for k, v in _cache_layers(cache)])
                else:
                    cache, mask = None, None
        return [r.new for r in rows]


def generate_refill(llm, prompts, encoded, n, temperature, top_p, max_new_tokens, stop, seed, adapters,
                    constraints) -> list:
    """``TransformersLLM.generate`` through :class:`RefillDecoder` (``scheduler: refill``): one row per prompt ×
    sample, each with its adapter, its constraint's matcher and its seed."""
    from .base import Generation, as_messages, split_response_prefix

    session = llm.grammar_session() if any(c is not None for c in constraints) else None
    rows = []
    for i, ids in enumerate(encoded):
        prefix = split_response_prefix(as_messages(prompts[i]))[1] if constraints[i] is not None else ""
        for s in range(n):
            matcher = session.matcher(constraints[i], prefix, max_new_tokens) if constraints[i] is not None else None
            rows.append(Row(ids, adapters[i], matcher, row_seed(seed, ids, s)))
    decoder = RefillDecoder(llm.model, llm.tokenizer.pad_token_id, llm._eos_ids, llm.options.batch_size,
                            llm._adapter_kwargs, lambda ids: llm.tokenizer.decode(ids, skip_special_tokens=True))
    new = decoder.run(rows, max_new_tokens, temperature, top_p, stop)
    results = []
    for i, ids in enumerate(encoded):
        texts, counts = [], []
        for row in new[i * n:(i + 1) * n]:
            texts.append(truncate_at_stop(llm.tokenizer.decode(row, skip_special_tokens=True), stop)[0])
            counts.append(len(row))
        results.append(Generation(texts=texts, prompt_tokens=len(ids), completion_tokens=counts))
    return results
