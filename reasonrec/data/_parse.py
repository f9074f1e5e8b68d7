"""Line-accurate parsing helpers shared by the raw-format readers.

The readers parse large files with pandas' C engine (fast) and only when that fails, or the result holds a
missing/non-numeric value, re-scan the file line by line to name the first bad line. So a truncated or
malformed file always ends in one :class:`~reasonrec.errors.DataError` of the form
``<file>:<line>: <what is wrong> (got '<the line>'); <what was expected>``.
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterator
from pathlib import Path

from ..errors import DataError


def open_text(path: Path, encoding: str = "utf-8"):
    """Open a plain or gzip-compressed text file (by suffix)."""
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding=encoding, errors="strict", newline="")
    return open(path, encoding=encoding, newline="")


def read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError) as err:  # gzip raises EOFError on a truncated stream
        raise DataError(f"{path}: cannot read ({err}); the file looks truncated or corrupt — download it again") from None


def line_of(path: Path, lineno: int, encoding: str = "latin-1") -> str:
    """The text of line ``lineno`` (1-based) of ``path``, for error messages."""
    with open_text(path, encoding) as f:
        for i, line in enumerate(f, 1):
            if i == lineno:
                return line.rstrip("\r\n")
    return "<end of file>"


def fail(path: Path, lineno: int, problem: str, expected: str, encoding: str = "latin-1") -> DataError:
    text = line_of(path, lineno, encoding)
    if len(text) > 120:
        text = text[:117] + "..."
    return DataError(f"{path}:{lineno}: {problem} (got {text!r}); expected {expected}")


def check_fields(path: Path, data: bytes, sep: bytes, n_fields: int, expected: str, encoding: str) -> None:
    """Raise a DataError naming the first line of ``data`` that does not split into ``n_fields`` fields."""
    for i, line in enumerate(data.splitlines(), 1):
        if line.count(sep) != n_fields - 1:
            raise fail(path, i, f"{line.count(sep) + 1 if line else 0} fields instead of {n_fields}", expected,
                       encoding)


def iter_json_lines(path: Path, what: str) -> Iterator[tuple[int, dict]]:
    """Yield (line number, object) for each non-empty line of a JSON-lines file (plain or .gz).

    Amazon's 2014 metadata files are Python literals (single quotes), not JSON: lines that fail ``json.loads``
    are retried with ``ast.literal_eval`` (the loader the dataset's authors publish), so both formats read.
    """
    import ast

    try:
        with open_text(path, "utf-8") as f:
            for i, line in enumerate(f, 1):
                s = line.strip()
                if not s:
                    continue
                try:
                    obj = json.loads(s)
                except ValueError:
                    try:
                        obj = ast.literal_eval(s)
                    except (ValueError, SyntaxError, MemoryError, RecursionError):
                        short = s if len(s) <= 120 else s[:117] + "..."
                        raise DataError(f"{path}:{i}: not a JSON object (got {short!r}); expected one {what} "
                                        "per line — the file may be truncated") from None
                if not isinstance(obj, dict):
                    raise DataError(f"{path}:{i}: expected a JSON object ({what}), got {type(obj).__name__}")
                yield i, obj
    except (OSError, EOFError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read ({err}); the file looks truncated or corrupt — download it again") from None
