"""Line-accurate parsing helpers shared by the raw-format readers.

The readers parse large files with pandas' C engine (fast) and only when that fails, or the result holds a
missing/non-numeric value, re-scan the file line by line to name the first bad line. So a truncated or
malformed file always ends in one :class:`~reasonrec.errors.DataError` of the form
``<file>:<line>: <what is wrong> (got '<the line>'); <what was expected>``; an unreadable file (corrupt gzip,
I/O error) in ``<file>: cannot read (...)``. Problems that leave a usable table (a missing metadata file, a
count that cannot be checked) are a :class:`DataWarning` naming the file.

Also here: the HTML-to-text extraction for Amazon metadata (:func:`html_text`) and the timestamp bounds every
reader checks (:func:`check_timestamp`).
"""

from __future__ import annotations

import gzip
import html
import json
import re
import time
import warnings
import zlib
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

from ..errors import DataError

# No dataset we read predates 1995 (MovieLens opened in 1997, Amazon in July 1995, Yelp in 2004): an earlier
# timestamp is a value cut short (``881250949`` → ``88125`` is 1970-01-02), not a real event.
EARLIEST_TIMESTAMP = 788_918_400  # 1995-01-01T00:00:00Z
_READ_ERRORS = (OSError, EOFError, zlib.error, UnicodeDecodeError)  # gzip: BadGzipFile is an OSError


class DataWarning(UserWarning):
    """A dataset problem that leaves a usable table (e.g. no metadata file, so items get placeholder titles)."""


def warn(message: str) -> None:
    warnings.warn(message, DataWarning, stacklevel=3)


def cannot_read(path: Path, err: BaseException) -> DataError:
    kind = "zlib.error" if isinstance(err, zlib.error) else type(err).__name__
    what = str(err).splitlines()[0] if str(err) else ""
    return DataError(f"{path}: cannot read ({kind}: {what}); the file looks truncated or corrupt — download it "
                     "again")


def read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except _READ_ERRORS as err:  # gzip raises EOFError on a truncated stream, zlib.error on corrupt bytes
        raise cannot_read(path, err) from None


def line_at(data: bytes, pos: int) -> int:
    """1-based line number of byte offset ``pos``."""
    return data.count(b"\n", 0, pos) + 1


def line_of(path: Path, lineno: int, encoding: str = "latin-1") -> str:
    """The text of line ``lineno`` (1-based) of ``path``, for error messages."""
    data = read_bytes(path)
    lines = data.split(b"\n")
    if lineno > len(lines) or (lineno == len(lines) and not lines[-1]):
        return "<end of file>"
    return lines[lineno - 1].rstrip(b"\r").decode(encoding, errors="replace")


def fail(path: Path, lineno: int, problem: str, expected: str, encoding: str = "latin-1") -> DataError:
    text = line_of(path, lineno, encoding)
    if len(text) > 120:
        text = text[:117] + "..."
    return DataError(f"{path}:{lineno}: {problem} (got {text!r}); expected {expected}")


def check_fields(path: Path, data: bytes, sep: bytes, n_fields: int, expected: str, encoding: str) -> None:
    """Raise a DataError naming the first line of ``data`` that does not split into ``n_fields`` fields."""
    lines = data.split(b"\n")
    if lines and not lines[-1]:
        lines.pop()  # the final line break ends the last line; it does not start an empty one
    for i, line in enumerate(lines, 1):
        line = line.rstrip(b"\r")
        if line.count(sep) != n_fields - 1:
            raise fail(path, i, f"{line.count(sep) + 1 if line else 0} fields instead of {n_fields}", expected,
                       encoding)


def check_ascii(path: Path, data: bytes, expected: str) -> None:
    """Numeric files are plain ASCII: name the line of the first other byte (pandas would raise a bare
    UnicodeDecodeError without a file or line)."""
    m = re.search(rb"[^\x00-\x7f]", data)
    if m:
        raise fail(path, line_at(data, m.start()), f"non-ASCII byte 0x{data[m.start()]:02x}", expected)


def latest_timestamp() -> int:
    """No event can be from the future (one day of slack for clock skew)."""
    return int(time.time()) + 86_400


def check_timestamp(value: int, where: str) -> None:
    if not EARLIEST_TIMESTAMP <= value <= latest_timestamp():
        raise DataError(f"{where}: timestamp {value} is outside 1995-01-01 .. today; a value cut short or "
                        "corrupted (expected unix seconds, e.g. 881250949)")


def iter_json_lines(path: Path, what: str) -> Iterator[tuple[int, dict]]:
    """Yield (line number, object) for each non-empty line of a JSON-lines file (plain or .gz).

    Amazon's 2014 metadata files are Python literals (single quotes), not JSON: lines that fail ``json.loads``
    are retried with ``ast.literal_eval`` (the loader the dataset's authors publish), so both formats read.
    Lines are split on ``\\n`` and decoded one by one, so a byte that is not UTF-8 is named by its line.
    """
    import ast

    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
            for i, raw in enumerate(f, 1):
                try:
                    s = raw.decode("utf-8").strip()
                except UnicodeDecodeError as err:
                    raise DataError(f"{path}:{i}: byte 0x{raw[err.start]:02x} at column {err.start + 1} is not "
                                    f"UTF-8; expected one {what} per line as UTF-8 JSON — the file looks corrupt, "
                                    "download it again") from None
                if not s:
                    continue
                try:
                    obj = json.loads(s)
                except (ValueError, RecursionError):
                    try:
                        obj = ast.literal_eval(s)
                    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                        short = s if len(s) <= 120 else s[:117] + "..."
                        raise DataError(f"{path}:{i}: not a JSON object (got {short!r}); expected one {what} "
                                        "per line — the file may be truncated") from None
                if not isinstance(obj, dict):
                    raise DataError(f"{path}:{i}: expected a JSON object ({what}), got {type(obj).__name__}")
                yield i, obj
    except _READ_ERRORS as err:
        raise cannot_read(path, err) from None


# ---------------------------------------------------------------- HTML in metadata text

# A value is parsed as HTML only when it holds markup: a complete tag (``<i>``, ``</span>``, ``<br/>``,
# ``<div class="x">``), the start of a tag with an attribute (Amazon 2018 titles cut to ``<span class="a-size``),
# or a comment. So "Love <3" or "a<b" stay text.
_MARKUP = re.compile(r"</?[A-Za-z][A-Za-z0-9]*(?:\s[^<>]*)?/?>|<[A-Za-z][A-Za-z0-9]*\s+[A-Za-z_:-]+\s*=|<!--")
_SKIP = {"script", "style", "noscript", "template"}
# inline tags join the text around them ("Har<i>ry</i>" is one word); every other tag separates words
_INLINE = {"a", "abbr", "b", "bdi", "bdo", "cite", "code", "em", "font", "i", "kbd", "mark", "q", "s", "small",
           "span", "strong", "sub", "sup", "time", "u", "var"}
_WS = re.compile(r"\s+")


class _TextParser(HTMLParser):
    """Collect the text of an HTML fragment: script/style bodies dropped, non-inline tags read as spaces."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        if tag in _SKIP:
            self._skip += 1
        if tag not in _INLINE:
            self.parts.append(" ")

    def handle_endtag(self, tag):
        if tag in _SKIP and self._skip:
            self._skip -= 1
        if tag not in _INLINE:
            self.parts.append(" ")

    def handle_data(self, data):
        if not self._skip:
            self.parts.append(data)


def has_markup(text: str) -> bool:
    return "<" in text and _MARKUP.search(text) is not None


def html_text(text: str) -> str:
    """The visible text of ``text`` (HTML fragment or plain text with entities), whitespace collapsed."""
    if not has_markup(text):
        return _WS.sub(" ", html.unescape(text)).strip()
    p = _TextParser()
    p.feed(text)
    # What the parser still holds is an unfinished construct (``<span class="a-size-medium``); HTML drops a
    # tag cut by the end of input, while ``close()`` would hand it back as text.
    rest = p.rawdata[p.rawdata.find("<"):] if "<" in p.rawdata else ""
    p.rawdata = p.rawdata[: len(p.rawdata) - len(rest)]
    p.close()
    return _WS.sub(" ", "".join(p.parts)).strip()


# ---------------------------------------------------------------- JSON fields (Amazon, Yelp)

_NO_TEXT = re.compile(r"\w")
_TAG_START = re.compile(r"<[A-Za-z/!]")  # what is left of a tag the parser could not read ("<3 Love" is a title)


def json_value(value) -> str:
    """``value`` as the file wrote it (shortened), for error messages."""
    try:
        text = json.dumps(value, default=str)
    except (TypeError, ValueError, RecursionError):  # 2014 literals may hold tuple keys
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def json_id(value, field: str, where: str) -> str:
    """A user or item id: a non-empty string (or an integer, some exports write numeric ids)."""
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise DataError(f"{where}: {field!r} is {json_value(value)}; expected a non-empty string id")


def json_rating(value, field: str, where: str) -> float:
    try:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ValueError
        r = float(value)
    except ValueError:
        r = float("nan")
    if not 1 <= r <= 5:  # also rejects NaN, which JSON-lines files may hold
        raise DataError(f"{where}: {field!r} is {json_value(value)}; expected a star rating from 1 to 5")
    return r


def json_timestamp(value, field: str, where: str) -> int:
    if isinstance(value, str) and re.fullmatch(r"\d{1,12}", value.strip()):
        value = int(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise DataError(f"{where}: {field!r} is {json_value(value)}; expected unix seconds (an integer)")
    check_timestamp(value, f"{where}: {field!r}")
    return value


class TextCleaner:
    """HTML → text for metadata fields, counting what it changed (reported in ``Tables.cleaning``)."""

    def __init__(self) -> None:
        self.html_values = 0

    def text(self, value, field: str, where: str) -> str:
        if value is None:
            return ""
        if isinstance(value, list | tuple):
            return " ".join(t for t in (self.text(v, field, where) for v in value) if t)
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise DataError(f"{where}: {field!r} is {json_value(value)}; expected text or a list of texts")
        value = str(value)
        if has_markup(value):
            self.html_values += 1
        return html_text(value)

    def categories(self, obj: dict, where: str) -> str:
        cats = obj.get("category")
        if cats is None:  # 2014: list of category paths
            paths = obj.get("categories") or []
            if not isinstance(paths, list):
                raise DataError(f"{where}: 'categories' is {json_value(paths)}; expected a list of category lists")
            cats = [c for path in paths for c in (path if isinstance(path, list) else [path])]
        elif not isinstance(cats, list):
            cats = [cats]
        seen: list[str] = []
        for c in cats:
            c = self.text(c, "category", where)
            if c and c not in seen:  # HTML-only entries ("</span></span>") are empty once parsed
                seen.append(c)
        return "|".join(seen)


def is_title(text: str) -> bool:
    """False for what Amazon 2018 stores in ``title`` when the page had none: nothing, markup that parses to
    nothing or to punctuation, or page JavaScript (``var aPageStart = (new Date()).getTime();``)."""
    return bool(_NO_TEXT.search(text)) and "getTime" not in text and not _TAG_START.match(text)


def placeholder_title(raw_item_id: str) -> str:
    return f"item {raw_item_id}"
