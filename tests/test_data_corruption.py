"""Generated corruption of the real shared files (issue 16): truncation, flipped bytes, dropped fields and values of
the wrong type at seeded random positions of ML-100K, Amazon 2018 Gift_Cards and ML-1M's movies/users. Every
outcome must be a correct table or one DataError naming the corrupted file, never another exception; the
corruptions no table can survive (a file cut short, a dropped column) must be errors."""

from __future__ import annotations

import gzip
import hashlib
import json
import random
import re
import warnings
from pathlib import Path

import pandas as pd
import pytest

from reasonrec.data import DataWarning, load_tables
from reasonrec.errors import DataError

SEED = 16
EARLIEST, LATEST = 788_918_400, int(pd.Timestamp.now(tz="UTC").timestamp()) + 86_400
TEXT_VALUES = ("", "x", "3.5", "-1", "0", "1e9", "99999999999999999999", "None", "\xe9", "1|2", " 7 ")
JSON_VALUES = (None, "", "text", 3.5, -1, 0, 1e30, True, [1], {"a": 1}, "99", 99, float("nan"))
# file → (dataset, separator of its fields or "json", cases per operation)
TARGETS = {
    "u.data": ("ml-100k", "\t", 3), "u.item": ("ml-100k", "|", 2), "u.user": ("ml-100k", "|", 2),
    "u.genre": ("ml-100k", "|", 1), "u.info": ("ml-100k", " ", 1),
    "Gift_Cards_5.json.gz": ("amazon", "json", 2), "meta_Gift_Cards.json.gz": ("amazon", "json", 2),
    "movies.dat": ("ml-1m", "::", 1), "users.dat": ("ml-1m", "::", 1),
}
FILES = {"ml-100k": ("u.data", "u.item", "u.user", "u.genre", "u.info"),
         "amazon": ("Gift_Cards_5.json.gz", "meta_Gift_Cards.json.gz"), "ml-1m": ("movies.dat", "users.dat")}
REQUIRED_REVIEW_KEYS = ("reviewerID", "asin", "overall", "unixReviewTime")
READ_META_KEYS = ("asin", "title", "description", "category", "brand")
ML1M_RATINGS = "1::1193::5::978300760\n1::661::3::978302109\n2::1193::5::978298413\n6040::2019::4::956703977\n"


def _cases():
    out = []
    for name, (_, _, n) in TARGETS.items():
        ops = ["truncate", "flip", "drop_field", "wrong_type"] + (["gz_truncate", "gz_flip"] if name.endswith(".gz")
                                                                 else [])
        out += [pytest.param(name, op, k, id=f"{name}-{op}-{k}") for op in ops for k in range(n)]
    return out


@pytest.fixture(scope="module")
def originals(shared_data):
    src = {"ml-100k": shared_data / "ml-100k", "amazon": shared_data / "amazon-2018", "ml-1m": shared_data / "ml-1m"}
    return {name: (src[ds] / name).read_bytes() for name, (ds, _, _) in TARGETS.items()}


@pytest.fixture(scope="module")
def reviewed(originals):
    lines = gzip.decompress(originals["Gift_Cards_5.json.gz"]).splitlines()
    return {json.loads(line)["asin"] for line in lines}


# ---------------------------------------------------------------- the corruptions

def _truncate(data: bytes, rng: random.Random) -> bytes:
    if rng.random() < 0.5:  # at a line break: the case only the stated counts can catch
        breaks = [m.start() + 1 for m in re.finditer(b"\n", data[:-1])]
        return data[: rng.choice(breaks)] if breaks else data[: len(data) // 2]
    return data[: rng.randrange(0, len(data) - 1)]


def _flip(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        pos = rng.randrange(len(out))
        choices = [b for b in (rng.randrange(256), *b"\n\t|:\"{0 ", 0xFF, 0xE9, 0x00) if b != out[pos]]
        out[pos] = rng.choice(choices)
    return bytes(out)


def _pick_line(lines: list[bytes], rng: random.Random, prefer=None) -> int:
    candidates = [i for i, line in enumerate(lines) if line.strip()]
    if prefer is not None and rng.random() < 0.7:
        candidates = [i for i in candidates if prefer(lines[i])] or candidates
    return rng.choice(candidates)


def _text_edit(data: bytes, sep: str, op: str, rng: random.Random) -> bytes:
    lines = data.split(b"\n")
    i = _pick_line(lines, rng)
    fields = lines[i].decode("latin-1").split(sep)
    j = rng.randrange(len(fields))
    if op == "drop_field":
        del fields[j]
    else:
        fields[j] = rng.choice(TEXT_VALUES)
    lines[i] = sep.join(fields).encode("latin-1")
    return b"\n".join(lines)


def _json_edit(data: bytes, op: str, rng: random.Random, name: str, reviewed: set[str]) -> tuple[bytes, str]:
    lines = data.split(b"\n")
    is_meta = name.startswith("meta")
    prefer = (lambda line: json.loads(line).get("asin") in reviewed) if is_meta else None
    i = _pick_line(lines, rng, prefer)
    obj = json.loads(lines[i])
    read = READ_META_KEYS if is_meta else REQUIRED_REVIEW_KEYS
    keys = [k for k in read if k in obj] if rng.random() < 0.7 else list(obj)
    key = rng.choice(keys or list(obj))
    if op == "drop_field":
        del obj[key]
    else:
        obj[key] = rng.choice(JSON_VALUES)
    lines[i] = json.dumps(obj).encode()
    return b"\n".join(lines), key


def _corrupt(name: str, op: str, k: int, data: bytes, reviewed: set[str]) -> tuple[bytes, bool]:
    """The corrupted bytes and whether no correct table can come out of them."""
    rng = random.Random(f"{SEED}-{name}-{op}-{k}")
    sep = TARGETS[name][1]
    if op == "gz_truncate":
        return data[: rng.randrange(10, len(data) - 8)], True  # gzip's length/CRC trailer is gone
    if op == "gz_flip":
        return _flip(data, rng), False  # a flip in the header's name or mtime is harmless
    gz = name.endswith(".gz")
    text = gzip.decompress(data) if gz else data
    must_fail = False
    if op == "truncate":
        new = _truncate(text, rng)
        # a cut ML-100K file disagrees with u.info; a cut JSON file or ML-1M listing may still be a table
        must_fail = TARGETS[name][0] == "ml-100k" and new.rstrip(b"\n") != text.rstrip(b"\n")
    elif op == "flip":
        new = _flip(text, rng)
    elif sep == "json":
        new, key = _json_edit(text, op, rng, name, reviewed)
        must_fail = op == "drop_field" and (key in REQUIRED_REVIEW_KEYS if not name.startswith("meta")
                                            else key == "asin")
    else:
        new = _text_edit(text, sep, op, rng)
        must_fail = op == "drop_field"
    return (gzip.compress(new, mtime=0) if gz else new), must_fail


# ---------------------------------------------------------------- what a correct table is

def _assert_correct(t, mutated: Path) -> None:
    inter, items, users = t.interactions, t.items, t.users
    assert list(inter.columns) == ["user_id", "item_id", "rating", "timestamp"] and len(inter) > 0
    assert [str(inter[c].dtype) for c in inter.columns] == ["int64", "int64", "float32", "int64"]
    assert inter["rating"].between(1, 5).all()
    assert inter["timestamp"].between(EARLIEST, LATEST).all()
    assert not inter.duplicated(["user_id", "item_id"]).any()
    assert items["item_id"].tolist() == list(range(1, len(items) + 1))
    assert users["user_id"].tolist() == list(range(1, len(users) + 1))
    assert inter["item_id"].between(1, len(items)).all() and inter["user_id"].between(1, len(users)).all()
    assert items["raw_item_id"].is_unique and users["raw_user_id"].is_unique
    for col in ("title", "categories", "description", "brand"):
        assert items[col].map(type).eq(str).all(), col
    assert (items["title"].str.strip() != "").all()
    assert not items["title"].str.contains(r"</?[A-Za-z][^>]*>").any()  # no markup left in a title
    assert t.checksums[mutated.name] == hashlib.sha256(mutated.read_bytes()).hexdigest()
    t.summary()


@pytest.mark.parametrize("name, op, k", _cases())
def test_corrupted_file_gives_a_table_or_one_data_error(name, op, k, originals, reviewed, shared_data, tmp_path,
                                                      monkeypatch):
    monkeypatch.setenv("REASONREC_CACHE_DIR", str(tmp_path / "cache"))
    dataset = TARGETS[name][0]
    folder = tmp_path / {"ml-100k": "ml-100k", "amazon": "amazon-2018", "ml-1m": "ml-1m"}[dataset]
    folder.mkdir()
    for f in FILES[dataset]:
        (folder / f).write_bytes(originals[f])
    if dataset == "ml-1m":  # the shared ML-1M has no ratings.dat: four real ones (users 1, 2, 6040)
        (folder / "ratings.dat").write_text(ML1M_RATINGS)
    data, must_fail = _corrupt(name, op, k, originals[name], reviewed)
    assert data != originals[name]
    (folder / name).write_bytes(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        try:
            t = load_tables(dataset, tmp_path, category="Gift_Cards" if dataset == "amazon" else None, cache=False)
        except DataError as err:
            msg = str(err)
            assert str(folder / name) in msg, msg  # names the corrupted file
            assert "\n" not in msg and len(msg) < 1000, msg
            return
    assert not must_fail, f"{name} {op}: read as a table of {len(t.interactions)} interactions"
    _assert_correct(t, folder / name)


def test_corruption_cases_are_bounded_and_seeded(originals, reviewed):
    cases = _cases()
    assert len(cases) <= 80
    a = [_corrupt(*c.values, originals[c.values[0]], reviewed) for c in cases[:6]]
    b = [_corrupt(*c.values, originals[c.values[0]], reviewed) for c in cases[:6]]
    assert a == b and len({x for x, _ in a}) == 6
