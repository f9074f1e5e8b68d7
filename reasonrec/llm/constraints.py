"""Structured output: declarative constraints on what ``generate`` may write, and the per-row state that enforces
them while decoding.

A constraint is data: :class:`Regex`, :class:`JsonSchema` (a schema dict or a pydantic model), :class:`Choice`
(one of fixed strings) and :class:`Ranking` (a numbered list whose entries are the candidates' titles, each exactly
once, optionally after a ``<think>`` block and with a short explanation per line). Each has a stable :meth:`key`
(part of the generation-cache key) and compiles to one grammar engine, xgrammar (regex, JSON schema and EBNF grammars
on any tokenizer's vocabulary; https://github.com/mlc-ai/xgrammar).

Local backends (transformers, llama.cpp) drive one :class:`RowMatcher` per generated row through three calls, so any
decode loop can use them (the transformers logits processor and the llama.cpp continuous-batching loop do):

    m = session.matcher(constraint, prefix)    # the row's state; the response prefix is consumed first
    m.fill(bitmask_row) / m.mask(logits)        # before sampling: forbid the tokens that would break the format
    m.accept(token_id)                          # after sampling; False if the token breaks it
    m.done                                      # the format is complete and a stop token was accepted

Response prefixes: a constraint describes the *whole* answer, prefix included. The matcher reads the prefix text
first (a prefix the constraint does not allow is an error), so the same constraint serves primed and unprimed
prompts. Servers that apply constraints to the continuation only (vLLM, OpenAI-compatible HTTP) refuse a prefix with
a constraint rather than guess.

Rankings cannot be a context-free grammar of reasonable size (the permutations of 20 titles), so :class:`Ranking`
compiles to a grammar of ``N`` numbered lines whose title is any candidate, and its matcher adds one rule on top: a
token is allowed only if the current line can still become a title not used on an earlier line. Together they give a
permutation. DEVIATION: on servers (vLLM, HTTP) only the grammar part applies (:meth:`Ranking.regex`), so a title may
repeat; :func:`~reasonrec.llm.parsers.parse_ranking` records duplicates and appends missing candidates.

Lengths: free-text parts have a bound in characters (``max_chars``), so the closing parts of a format fit in
``max_new_tokens``; :func:`chars_for_tokens` turns a token budget into a conservative character bound.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ..errors import BackendError

# Characters per token assumed when a token budget is turned into a character bound. English BPE text averages
# about 4 characters per token (SmolLM2 on the R4ec answers: 4.3); 3 leaves room for names, numbers and punctuation.
CHARS_PER_TOKEN = 3


def chars_for_tokens(tokens: int, reserve: int = 0) -> int:
    """A character bound for a free-text part that leaves ``reserve`` tokens for the rest of the format."""
    return max(1, (tokens - reserve) * CHARS_PER_TOKEN)


def regex_escape(text: str) -> str:
    """``text`` as a regex literal both Python's ``re`` and xgrammar read (``re.escape`` escapes spaces and writes
    a raw line break after a backslash, which xgrammar's regex parser does not take)."""
    out = []
    for ch in text:
        if ch in ".^$*+?{}[]\\|()/-":
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        else:
            out.append(ch)
    return "".join(out)


def _ebnf_str(s: str) -> str:
    """An EBNF string literal (xgrammar reads JSON-style escapes)."""
    return json.dumps(s, ensure_ascii=False)


class Constraint:
    """Base class: what every constraint offers. ``kind`` names the capability a backend must list in
    ``supports`` as ``constraint:<kind>``."""

    kind: ClassVar[str] = ""

    def key(self) -> dict[str, Any]:
        """A JSON-able, stable description: equal constraints have equal keys (generation cache)."""
        raise NotImplementedError

    def grammar(self):
        """The xgrammar ``Grammar`` of the whole answer."""
        raise NotImplementedError

    def regex(self) -> str | None:
        """The constraint as one regular expression, for servers that take regexes (``None`` if it has none)."""
        return None

    reserve_tokens: int = 0

    def matcher_extra(self, vocab: _Vocab) -> _Extra | None:
        """An additional per-row rule on top of the grammar (rankings); ``None`` for pure grammars."""
        return None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Constraint) and self.key() == other.key()

    def __hash__(self) -> int:
        return hash(json.dumps(self.key(), sort_keys=True))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({json.dumps(self.key(), ensure_ascii=False)[:120]})"


class Regex(Constraint):
    """The answer matches ``pattern`` in full (xgrammar's regex dialect: classes, groups, ``|``, ``*+?{m,n}``).

    ``reserve_tokens``: tokens the format needs after its free text (closing tags, a verdict). Once a row has no
    more than that many tokens of its ``max_new_tokens`` left, the matcher *wraps up*: it allows only a stop token
    or a token opening a tag (``<``) wherever the grammar allows one, so free text ends and the closing parts fit
    (a character bound alone cannot promise that: digits and rare words take a token per character)."""

    kind = "regex"

    def __init__(self, pattern: str, reserve_tokens: int = 0):
        try:
            re.compile(pattern)
        except re.error as err:
            raise BackendError(f"Regex constraint: {pattern!r} is not a valid regular expression ({err})") from None
        self.pattern = pattern
        self.reserve_tokens = int(reserve_tokens)

    def key(self) -> dict[str, Any]:
        return {"regex": self.pattern, **({"reserve_tokens": self.reserve_tokens} if self.reserve_tokens else {})}

    def grammar(self):
        import xgrammar as xgr

        return xgr.Grammar.from_regex(self.pattern)

    def regex(self) -> str:
        return self.pattern


class JsonSchema(Constraint):
    """The answer is one JSON value valid under ``schema`` (a dict, a JSON string or a pydantic model class),
    written compactly (no free whitespace, so a small model cannot spend its budget on blank lines)."""

    kind = "json"

    def __init__(self, schema: dict[str, Any] | str | type):
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except json.JSONDecodeError as err:
                raise BackendError(f"JsonSchema constraint: not valid JSON ({err})") from None
        elif isinstance(schema, type) and hasattr(schema, "model_json_schema"):
            schema = schema.model_json_schema()
        if not isinstance(schema, dict):
            raise BackendError(f"JsonSchema constraint needs a JSON object schema; got {type(schema).__name__}")
        self.schema = schema

    def key(self) -> dict[str, Any]:
        return {"json_schema": self.schema}

    def grammar(self):
        import xgrammar as xgr

        try:
            return xgr.Grammar.from_json_schema(json.dumps(self.schema), any_whitespace=False, strict_mode=True)
        except Exception as err:  # xgrammar raises RuntimeError/InvalidJSONError for schemas it cannot convert
            raise BackendError(f"JsonSchema constraint: xgrammar cannot convert the schema ({err})") from None


class Choice(Constraint):
    """The answer is exactly one of ``options``."""

    kind = "choice"

    def __init__(self, options: Sequence[str]):
        options = [str(o) for o in options]
        if len(options) < 1 or any(not o for o in options):
            raise BackendError(f"Choice constraint needs non-empty options; got {options}")
        self.options = options

    def key(self) -> dict[str, Any]:
        return {"choice": self.options}

    def grammar(self):
        import xgrammar as xgr

        return xgr.Grammar.from_ebnf("root ::= " + " | ".join(_ebnf_str(o) for o in self.options))

    def regex(self) -> str:
        return "(" + "|".join(regex_escape(o) for o in self.options) + ")"


class Ranking(Constraint):
    """A numbered list of ``titles``, each exactly once: ``1. Title`` per line, or ``1. Title - explanation``
    with ``explain`` (at most ``explain_chars`` characters, no line break). ``think_chars > 0`` allows a
    ``<think>...</think>`` block of at most that many characters first (STARec Tab. 1)."""

    kind = "ranking"

    def __init__(self, titles: Sequence[str], explain: bool = False, explain_chars: int = 80, think_chars: int = 0):
        titles = [str(t).strip() for t in titles]
        if not titles or any(not t or "\n" in t for t in titles):
            raise BackendError("Ranking constraint needs non-empty single-line titles")
        if len(set(titles)) != len(titles):
            dup = sorted({t for t in titles if titles.count(t) > 1})
            raise BackendError(f"Ranking constraint: titles must be distinct; repeated: {dup}")
        self.titles, self.explain = titles, explain
        self.explain_chars, self.think_chars = int(explain_chars), int(think_chars)

    def key(self) -> dict[str, Any]:
        return {"ranking": self.titles, "explain": self.explain, "explain_chars": self.explain_chars,
                "think_chars": self.think_chars}

    def _line_tail(self) -> str:
        return f'" - " [^\\n]{{1,{self.explain_chars}}} "\\n"' if self.explain else '"\\n"'

    def grammar(self):
        import xgrammar as xgr

        rules = ["title ::= " + " | ".join(_ebnf_str(t) for t in self.titles)]
        lines = [f"line{k} ::= {_ebnf_str(f'{k}. ')} title {self._line_tail()}" for k in range(1, len(self.titles) + 1)]
        head = ""
        if self.think_chars:
            rules.append(f'think ::= "<think>" [^<]{{0,{self.think_chars}}} "</think>\\n"')
            head = "think "
        root = "root ::= " + head + " ".join(f"line{k}" for k in range(1, len(self.titles) + 1))
        return xgr.Grammar.from_ebnf("\n".join([root, *rules, *lines]))

    def regex(self) -> str:
        title = "(" + "|".join(regex_escape(t) for t in self.titles) + ")"
        tail = f" - [^\\n]{{1,{self.explain_chars}}}\\n" if self.explain else "\\n"
        think = f"<think>[^<]{{0,{self.think_chars}}}</think>\\n" if self.think_chars else ""
        return think + "".join(f"{k}\\. {title}{tail}" for k in range(1, len(self.titles) + 1))

    def matcher_extra(self, vocab: _Vocab) -> _Extra:
        return _DistinctTitles(self, vocab)


ConstraintArg = Constraint | None | Sequence[Constraint | None]
# What the xgrammar-driven local backends enforce (their ``supports`` entries).
LOCAL_KINDS = frozenset({"constraint:regex", "constraint:json", "constraint:choice", "constraint:ranking"})


def per_prompt_constraints(constraint: ConstraintArg, n_prompts: int) -> list[Constraint | None]:
    """One constraint (or ``None``) per prompt, from one for all or a list of one per prompt."""
    from .base import per_prompt  # at call time: base imports this module

    out = per_prompt(constraint, n_prompts, Constraint, "constraint")
    for c in out:
        if c is not None and not isinstance(c, Constraint):
            raise BackendError(f"a constraint is a reasonrec.llm.constraints.Constraint; got {type(c).__name__}")
    return out


def check_supported(backend: str, supports: frozenset[str], constraints: Sequence[Constraint | None]) -> None:
    """One clear error when a backend cannot enforce a constraint it was given."""
    kinds = sorted({c.kind for c in constraints if c is not None and f"constraint:{c.kind}" not in supports})
    if kinds:
        have = sorted(s.split(":", 1)[1] for s in supports if s.startswith("constraint:")) or ["none"]
        raise BackendError(f"the {backend} backend cannot enforce {', '.join(kinds)} constraints (it enforces: "
                           f"{', '.join(have)}); use a local backend (transformers, llama.cpp) or drop the "
                           "constraint (methods: generation.constrain: false)")


def constraint_key(constraint: Constraint | None) -> Any:
    return None if constraint is None else constraint.key()


# ---------------------------------------------------------------------------------------------- decoding state

@dataclass
class _Vocab:
    """A vocabulary as xgrammar sees it: the tokenizer info, the bytes of each token, and the ids of the tokens
    that contain a line break (rankings check those in explanation text)."""

    info: Any
    size: int
    token_bytes: list[bytes]
    stop_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    newline_ids: np.ndarray = field(init=False)
    closing_newline_ids: np.ndarray = field(init=False)  # a line break after a ">" ("</think>\n" ends a block)
    tag_ids: np.ndarray = field(init=False)  # tokens that open a tag
    line_ids: np.ndarray = field(init=False)  # tokens that start with a line break

    def __post_init__(self) -> None:
        def ids(pred) -> np.ndarray:
            return np.array([i for i, b in enumerate(self.token_bytes) if b and pred(b)], dtype=np.int64)

        self.lengths = np.array([len(b) for b in self.token_bytes], dtype=np.int64)
        self.first = np.array([b[0] if b else -1 for b in self.token_bytes], dtype=np.int64)
        self.newline_ids = ids(lambda b: b"\n" in b)
        self.closing_newline_ids = ids(lambda b: b"\n" in b and b">" in b)
        self.tag_ids = ids(lambda b: b.startswith(b"<"))
        self.line_ids = ids(lambda b: b.startswith(b"\n"))


def _bits_of(bits: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """The ids among ``ids`` whose bit is set in a uint32 bitmask row."""
    if ids.size == 0:
        return ids
    return ids[((bits[ids >> 5] >> (ids & 31).astype(np.uint32)) & 1) == 1]


def _only(bits: np.ndarray, ids: np.ndarray) -> bool:
    """Keep only ``ids`` (those already allowed) in a uint32 bitmask row; False (row unchanged) if none is."""
    keep = _bits_of(bits, ids)
    if keep.size == 0:
        return False
    bits[:] = 0
    np.bitwise_or.at(bits, keep >> 5, (np.uint32(1) << (keep & 31).astype(np.uint32)))
    return True


def _xgrammar():
    try:
        import xgrammar
    except ImportError:
        raise BackendError("constrained generation on a local backend needs xgrammar: pip install xgrammar==0.2.9") \
            from None
    return xgrammar


class GrammarSession:
    """Compiled grammars for one vocabulary (one per backend instance), cached by constraint key.

    ``info`` is an ``xgrammar.TokenizerInfo`` whose ``vocab_size`` equals the width of the model's logits.
    """

    def __init__(self, info, cache_size: int = 256):
        xgr = _xgrammar()

        self.vocab = _Vocab(info=info, size=info.vocab_size, token_bytes=list(info.decoded_vocab),
                            stop_ids=np.array(sorted(info.stop_token_ids), dtype=np.int64))
        # One compiler thread: the machine's cores belong to the model's matrix products.
        self._compiler = xgr.GrammarCompiler(info, max_threads=1)
        self._compile = functools.lru_cache(maxsize=cache_size)(self._compile_uncached)

    @classmethod
    def from_huggingface(cls, tokenizer, vocab_size: int, stop_token_ids: Sequence[int]) -> GrammarSession:
        xgr = _xgrammar()

        return cls(xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size,
                                                      stop_token_ids=sorted(stop_token_ids)))

    @classmethod
    def from_token_bytes(cls, token_bytes: Sequence[bytes], stop_token_ids: Sequence[int]) -> GrammarSession:
        """From each token's raw bytes (e.g. a GGUF vocabulary read through llama.cpp); special tokens have
        ``b""`` and are never allowed, except the stop tokens at the end."""
        xgr = _xgrammar()

        return cls(xgr.TokenizerInfo(list(token_bytes), xgr.VocabType.RAW, vocab_size=len(token_bytes),
                                     stop_token_ids=sorted(stop_token_ids)))

    def _compile_uncached(self, key: str, constraint: Constraint):
        try:
            return self._compiler.compile_grammar(constraint.grammar())
        except BackendError:
            raise
        except Exception as err:  # xgrammar reports bad grammars as RuntimeError with its parser's message
            raise BackendError(f"cannot compile {constraint!r} to a grammar: {err}") from None

    def matcher(self, constraint: Constraint, prefix: str = "", max_new_tokens: int = 0) -> RowMatcher:
        """A fresh per-row state for ``constraint`` that has consumed ``prefix`` (the response prefix);
        ``max_new_tokens`` (0 = unknown) lets it wrap up in time (see :class:`Regex`)."""
        compiled = self._compile(json.dumps(constraint.key(), sort_keys=True), constraint)
        m = RowMatcher(compiled, self.vocab, constraint.matcher_extra(self.vocab), budget=max_new_tokens,
                       reserve=constraint.reserve_tokens)
        if prefix and not m.accept_text(prefix):
            raise BackendError(f"the response prefix {prefix[:60]!r} does not match {constraint!r}: a constraint "
                               "describes the whole answer, prefix included")
        return m


class RowMatcher:
    """The constraint state of one generated row (backend-neutral; see the module docstring)."""

    def __init__(self, compiled, vocab: _Vocab, extra: _Extra | None = None, budget: int = 0, reserve: int = 0):
        import xgrammar as xgr

        self._m = xgr.GrammarMatcher(compiled)
        self.vocab = vocab
        self.extra = extra
        self.budget, self.reserve, self.generated = budget, reserve, 0
        self.width = (vocab.size + 31) // 32
        self._bits = np.zeros((1, self.width), dtype=np.int32)
        self.rejected = False  # a token outside the format reached accept (a caller bug or a stop-string cut)

    @property
    def done(self) -> bool:
        return self._m.is_terminated()

    def accept_text(self, text: str) -> bool:
        ok = bool(self._m.accept_string(text.encode("utf-8")))
        if ok and self.extra is not None:
            self.extra.advance(text.encode("utf-8"))
        return ok

    def accept(self, token_id: int) -> bool:
        """Advance past one sampled token; False (and ``rejected``) if the format does not allow it."""
        if self.done or not self._m.accept_token(int(token_id)):
            self.rejected = True
            return False
        self.generated += 1
        if self.extra is not None:
            self.extra.advance(self.vocab.token_bytes[int(token_id)] if token_id < len(self.vocab.token_bytes)
                               else b"")
        return True

    def fill(self, bitmask: np.ndarray, index: int = 0) -> None:
        """Write the allowed next tokens into row ``index`` of an int32 bitmask of shape (B, ceil(V / 32))."""
        self._m.fill_next_token_bitmask(bitmask, index)
        bits = bitmask[index].view(np.uint32)
        if self.extra is not None:
            self.extra.restrict(bits)
        if self.budget:
            reserve = self.extra.reserve() if self.extra is not None else self.reserve
            if reserve and self.budget - self.generated <= reserve:
                self._wrap_up(bits)

    def _wrap_up(self, bits: np.ndarray) -> None:
        """Out of free-text budget: a stop token if allowed, else a tag opening (or, in a ranking's explanation, a
        line break) if allowed, else whatever the grammar allows (a fixed part being written). Then, of the tokens
        left, only the longest per first byte: the fixed parts take as few tokens as the vocabulary allows, and
        where the format branches (a verdict: "like" / "not like") the model still picks the branch."""
        if _only(bits, self.vocab.stop_ids):
            return
        if self.extra is None or not self.extra.wrap_up(bits):
            _only(bits, self.vocab.tag_ids)
        allowed = np.flatnonzero(np.unpackbits(bits.view(np.uint8), bitorder="little")[:self.vocab.size])
        if allowed.size > 1:
            first, lengths = self.vocab.first[allowed], self.vocab.lengths[allowed]
            order = np.lexsort((-lengths, first))  # by first byte, longest first
            keep = allowed[order][np.r_[True, first[order][1:] != first[order][:-1]]]
            _only(bits, keep)

    def allowed(self) -> np.ndarray:
        """Boolean (V,) of the tokens allowed next."""
        self.fill(self._bits, 0)
        return np.unpackbits(self._bits[0].view(np.uint8), bitorder="little")[:self.vocab.size].astype(bool)

    def mask(self, logits: np.ndarray) -> np.ndarray:
        """Set the logits (float32, (V,)) of forbidden tokens to -inf, in place, with xgrammar's CPU kernel
        (logits wider than the vocabulary, as padded embedding matrices give, lose their extra columns too)."""
        import torch
        import xgrammar as xgr

        self.fill(self._bits, 0)
        view = torch.from_numpy(logits)  # shares memory with the caller's buffer
        xgr.apply_token_bitmask_inplace(view[None, :self.vocab.size], torch.from_numpy(self._bits))
        view[self.vocab.size:] = float("-inf")
        return logits


class _Extra:
    """A rule a grammar cannot express, applied on top of the grammar's mask."""

    def advance(self, data: bytes) -> None: ...

    def restrict(self, bits: np.ndarray) -> None: ...

    def reserve(self) -> int:
        return 0

    def wrap_up(self, bits: np.ndarray) -> bool:
        return False


_NUMBER = re.compile(rb"^(\d+)\. ")


class _DistinctTitles(_Extra):
    """Rankings: each line's title must be one not used on an earlier line (the grammar guarantees the line
    shape and that the title is one of the candidates)."""

    def __init__(self, ranking: Ranking, vocab: _Vocab):
        self.titles = [t.encode("utf-8") for t in ranking.titles]
        self.vocab = vocab
        self.tail = b" - " if ranking.explain else b"\n"
        self.think = ranking.think_chars > 0
        self.used: set[bytes] = set()
        self.pre = b""  # text before the list (the think block) while the list has not started
        self.line = b""  # the current, unfinished line of the list
        self.in_list = not self.think

    # -- state
    def _split_list(self, data: bytes) -> bytes | None:
        """Feed think-block text; returns the part of ``data`` that belongs to the list (None if none yet)."""
        if self.in_list:
            return data
        self.pre += data
        end = self.pre.find(b"</think>\n")
        if end < 0:
            return None
        self.in_list = True
        rest = self.pre[end + len(b"</think>\n"):]
        self.pre = b""
        return rest

    def _title_of(self, body: bytes) -> bytes | None:
        """The unused title a finished line body names: the body is the title, or title + tail + text."""
        hits = [t for t in self.titles if t not in self.used and (body == t or body.startswith(t + b" - "))]
        return max(hits, key=len) if hits else None

    def _line_ok(self, line: bytes, used: set[bytes], finished: bool) -> bool:
        m = _NUMBER.match(line)
        if m is None:
            return True  # still writing the number: the grammar decides
        body = line[m.end():]
        free = [t for t in self.titles if t not in used]
        if finished:
            return any(body == t or body.startswith(t + b" - ") for t in free)
        return any(self._fits(body, t) for t in free)

    def reserve(self) -> int:
        """Tokens the unwritten titles need (about one per 2 characters: digits are single tokens) plus the
        numbering and, in the think block, its closing."""
        left = [t for t in self.titles if t not in self.used]
        return sum(len(t) // 2 + 5 for t in left) + 4 + (6 if not self.in_list else 0)  # + this line's end

    def wrap_up(self, bits: np.ndarray) -> bool:
        if not self.in_list:
            return _only(bits, self.vocab.tag_ids)  # close the think block
        if self._explaining():
            return _only(bits, self.vocab.line_ids)  # end the explanation
        return True  # writing a number or a title: the grammar and the distinct-title rule decide

    def _explaining(self) -> bool:
        """The current line's title is complete and its explanation started: only line breaks need checking."""
        m = _NUMBER.match(self.line)
        if m is None:
            return False
        body = self.line[m.end():]
        return any(body.startswith(t + b" - ") for t in self.titles if t not in self.used)

    def advance(self, data: bytes) -> None:
        data = self._split_list(data)
        if data is None:
            return
        parts = (self.line + data).split(b"\n")
        for done in parts[:-1]:
            m = _NUMBER.match(done)
            title = self._title_of(done[m.end():]) if m else None
            if title is not None:
                self.used.add(title)
        self.line = parts[-1]

    def _ok(self, data: bytes) -> bool:
        """Would appending ``data`` keep every line's title unused?"""
        if not self.in_list:
            joined = self.pre + data
            end = joined.find(b"</think>\n")
            if end < 0:
                return True
            data, line = joined[end + len(b"</think>\n"):], b""
        else:
            line = self.line
        parts = (line + data).split(b"\n")
        used = set(self.used)
        for done in parts[:-1]:
            if not self._line_ok(done, used, finished=True):
                return False
            m = _NUMBER.match(done)
            if m:
                body = done[m.end():]
                used.add(max((t for t in self.titles if t not in used and (body == t or body.startswith(t + b" - "))),
                              key=len))
        return self._line_ok(parts[-1], used, finished=False)

    def _fits(self, body: bytes, title: bytes) -> bool:
        """Can a line whose text after the number is ``body`` still turn out to name ``title``?"""
        if title.startswith(body):
            return True
        if not body.startswith(title) or self.tail != b" - ":
            return False
        rest = body[len(title):]
        return b" - ".startswith(rest) or rest.startswith(b" - ")

    def _only_free_fit(self) -> bool:
        """The current line names a number and every title it can still become is unused. Then a token
        without a line break cannot make it repeat a title: the grammar keeps the line on some candidate it
        already fits, and all of those are free."""
        m = _NUMBER.match(self.line)
        if m is None:
            return False
        body = self.line[m.end():]
        return not any(self._fits(body, t) for t in self.used)

    def restrict(self, bits: np.ndarray) -> None:
        """Clear the bits of allowed tokens that would repeat a title. Only tokens that can steer the line
        towards a used title are checked: in think or explanation text, and in a title that can only become
        unused ones, that is the tokens with a line break (a new line starts); otherwise every allowed token
        (few: prefixes of the candidates). Checking all allowed tokens everywhere was half of a ranking's
        decode time (about 1,500 tokens after "Title -")."""
        if not self.in_list:
            # Only a line break that ends "</think>" can start the list.
            ids = self.vocab.newline_ids if self.pre.endswith(b"</think>") else self.vocab.closing_newline_ids
            ids = _bits_of(bits, ids)
        elif self._explaining() or self._only_free_fit():
            ids = _bits_of(bits, self.vocab.newline_ids)
        else:
            allowed = np.unpackbits(bits.view(np.uint8), bitorder="little")[:self.vocab.size]
            ids = np.flatnonzero(allowed)
        for i in ids.tolist():
            data = self.vocab.token_bytes[i]
            if data and not self._ok(data):
                bits[i >> 5] &= np.uint32(~(1 << (i & 31)) & 0xFFFFFFFF)
