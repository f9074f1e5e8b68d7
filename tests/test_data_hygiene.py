"""Data hygiene (issue 16): HTML in Amazon metadata, repeated interactions, implausible values, truncated and
corrupt files, the content-keyed table cache and credentials in URLs. Every fixture is built in ``tmp_path``
from the real shared files."""

from __future__ import annotations

import base64
import functools
import gzip
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import warnings
import zlib

import numpy as np
import pandas as pd
import pytest
from _data_files import ML100K_FILES, copy_ml100k

from reasonrec.data import DataWarning, fetch, load_tables, make_splits
from reasonrec.data.sources import redact_url
from reasonrec.errors import DataError

PROTOCOLS = ("collm", "kar", "starec", "tallrec")


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("REASONREC_CACHE_DIR", str(tmp_path / "cache"))


def _reviews(amazon_dir) -> list[str]:
    return gzip.decompress((amazon_dir / "Gift_Cards_5.json.gz").read_bytes()).decode().splitlines()


def _meta(amazon_dir) -> list[dict]:
    return [json.loads(line) for line in
            gzip.decompress((amazon_dir / "meta_Gift_Cards.json.gz").read_bytes()).decode().splitlines()]


def _write_gz(path, lines):
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def _one_line_error_naming(err: DataError, path) -> None:
    assert str(path) in str(err) and "\n" not in str(err), str(err)


# ---------------------------------------------------------------- HTML in Amazon 2018 metadata

def test_html_in_amazon_metadata_is_extracted_and_non_titles_replaced(amazon_dir, tmp_path):
    d = tmp_path / "amazon-2018"
    d.mkdir()
    shutil.copy(amazon_dir / "Gift_Cards_5.json.gz", d)
    meta = _meta(amazon_dir)
    reviewed = {json.loads(line)["asin"] for line in _reviews(amazon_dir)}
    rows = {m["asin"]: m for m in meta if m["asin"] in reviewed}  # the last row of an asin wins, as in the reader
    a, b, c, e, f = sorted(rows)[:5]
    # what Amazon 2018 pages hold where a title should be: a cut tag, page JavaScript; beside real markup
    rows[a].update(title='<span class="a-size-medium a-color-secondary"',
                   description=["<p>A gift card for <i>coffee</i> lovers. Redeemable in stores.</p>"])
    rows[b].update(title='<span class="a-size-medium a-color-secondary"', description=[])
    rows[c].update(title="Starbucks <b>Gift</b> Card &amp; Mug", description=[
        '<div class="aplus"><i>Great</i> for<br/>birthdays.<script>var x = 1;</script></div>'])
    rows[e].update(title="var aPageStart = (new Date()).getTime();", description=["</span></span>"])
    rows[f].update(category=["Gift Cards", "</span></span></span>"])
    _write_gz(d / "meta_Gift_Cards.json.gz", [json.dumps(m) for m in rows.values()])

    t = load_tables("amazon", tmp_path, category="Gift_Cards", cache=False)
    items = t.items.set_index("raw_item_id")
    assert items.loc[a, "title"] == "A gift card for coffee lovers."  # the description's first sentence
    assert items.loc[a, "description"] == "A gift card for coffee lovers. Redeemable in stores."
    assert items.loc[b, "title"] == f"item {b}" and items.loc[e, "title"] == f"item {e}"
    assert items.loc[c, "title"] == "Starbucks Gift Card & Mug"
    assert items.loc[c, "description"] == "Great for birthdays."
    assert items.loc[f, "categories"] == "Gift Cards"
    # the real rows' markup (<div class="aplus">, <span> features, <img> categories) is gone everywhere
    tag = re.compile(r"</?[A-Za-z][^>]*>|<span class")
    for col in ("title", "description", "categories", "brand"):
        assert not t.items[col].str.contains(tag).any(), col
    assert (t.cleaning["titles_from_description"], t.cleaning["titles_from_id"]) == (1, 2)
    assert t.cleaning["html_values"] == 7  # ours: the reviewed items' real rows hold no markup in these fields
    stats = make_splits(t, "kar").stats()
    assert stats["cleaning"] == t.cleaning and t.summary()["cleaning"] == t.cleaning


# ---------------------------------------------------------------- repeated (user, item) interactions

@pytest.fixture(scope="module")
def repeats_dir(ml100k_dir, tmp_path_factory):
    """ML-100K plus a second, later rating of every user's most recent item (and two ties for user 1)."""
    root = tmp_path_factory.mktemp("repeats")
    d = copy_ml100k(ml100k_dir, root)
    raw = pd.read_csv(d / "u.data", sep="\t", names=["u", "i", "r", "t"])
    last = raw.loc[raw.sort_values(["u", "t"], kind="stable").groupby("u").tail(1).index]
    extra = [f"{r.u}\t{r.i}\t5\t{r.t + 60}\n" for r in last.itertuples()]
    u1 = last[last["u"] == 1].iloc[0]
    extra += [f"1\t{u1.i}\t2\t{u1.t + 120}\n", f"1\t{u1.i}\t4\t{u1.t + 120}\n"]  # a tie: the later line wins
    with open(d / "u.data", "a") as fh:
        fh.write("".join(extra))
    (d / "u.info").write_text(f"943 users\n1682 items\n{100_000 + len(extra)} ratings\n")
    return d, last.set_index("u"), int(u1.i)


@pytest.fixture(scope="module")
def repeats(repeats_dir):
    d, _, _ = repeats_dir
    return load_tables("ml-100k", d.parent, cache=False)


def test_repeated_interactions_keep_the_latest(repeats_dir, repeats):
    _, last, u1_item = repeats_dir
    inter = repeats.interactions
    assert not inter.duplicated(["user_id", "item_id"]).any()
    assert len(inter) == 100_000 and repeats.cleaning["duplicates_dropped"] == 943 + 2
    pair = inter.set_index(["user_id", "item_id"])
    kept = pair.loc[list(zip(last.index, last["i"], strict=True))]
    ones = np.asarray(last.index) == 1
    assert (kept["rating"].to_numpy()[~ones] == 5).all()
    assert (kept["timestamp"].to_numpy()[~ones] == last["t"].to_numpy()[~ones] + 60).all()
    assert tuple(pair.loc[(1, u1_item)]) == (4.0, int(last.loc[1, "t"]) + 120)


def test_ml100k_and_gift_cards_repeat_counts(ml100k_dir, amazon_dir):
    # ML-100K has no repeated pair, so the README's protocol figures stand; Gift_Cards repeats 6 pairs
    ml = load_tables("ml-100k", ml100k_dir.parent, cache=False)
    assert ml.cleaning["duplicates_dropped"] == 0 and len(ml.interactions) == 100_000
    gc = load_tables("amazon", amazon_dir.parent, category="Gift_Cards", cache=False)
    assert gc.cleaning["duplicates_dropped"] == 7 and len(gc.interactions) == 2965


def _targets_in_history(df: pd.DataFrame) -> int:
    if not len(df):
        return 0
    ex = df[["item_id", "hist_item_ids"]].explode("hist_item_ids").dropna()
    return int((ex["hist_item_ids"].astype(np.int64).to_numpy() == ex["item_id"].to_numpy()).sum())


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_no_sample_has_its_target_in_its_history(repeats, amazon_dir, protocol):
    sp = make_splits(repeats, protocol, seed=0)
    assert len(sp.test) and all(_targets_in_history(getattr(sp, s)) == 0 for s in ("train", "valid", "test"))
    # the re-rated items are each user's latest event, so they are targets: the check did look at them
    assert sp.stats()["cleaning"]["duplicates_dropped"] == 945
    gc = make_splits(load_tables("amazon", amazon_dir.parent, category="Gift_Cards"), protocol, seed=0)
    assert all(_targets_in_history(getattr(gc, s)) == 0 for s in ("train", "valid", "test"))


# ---------------------------------------------------------------- implausible values, missing metadata

@pytest.mark.parametrize("field, value, words", [
    ("reviewerID", None, "'reviewerID' is null; expected a non-empty string id"),
    ("asin", "", "'asin' is \"\"; expected a non-empty string id"),
    ("overall", 99, "'overall' is 99; expected a star rating from 1 to 5"),
    ("overall", "five", "'overall' is \"five\""),
    ("unixReviewTime", 14843, "'unixReviewTime': timestamp 14843 is outside 1995-01-01"),
    ("unixReviewTime", [1484352000], "'unixReviewTime' is \\[1484352000\\]; expected unix seconds"),
])
def test_implausible_review_fields_are_rejected_naming_file_and_line(amazon_dir, tmp_path, field, value, words):
    d = tmp_path / "amazon-2018"
    d.mkdir()
    lines = _reviews(amazon_dir)[:20]
    bad = json.loads(lines[2])
    bad[field] = value
    lines[2] = json.dumps(bad)
    (d / "Gift_Cards_5.json").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=rf"Gift_Cards_5\.json:3: {words}") as err:
        load_tables("amazon", tmp_path, category="Gift_Cards", cache=False)
    _one_line_error_naming(err.value, d / "Gift_Cards_5.json")


def test_missing_meta_file_warns_naming_it_every_time(amazon_dir, tmp_path):
    d = tmp_path / "amazon-2018"
    d.mkdir()
    shutil.copy(amazon_dir / "Gift_Cards_5.json.gz", d)
    for _ in range(2):  # the second load reads the cache and must warn just the same
        with pytest.warns(DataWarning, match=r"no metadata file for Gift_Cards \(looked for meta_Gift_Cards"):
            t = load_tables("amazon", tmp_path, category="Gift_Cards")
        assert t.items["title"].str.fullmatch(r"item \w+").all()
        assert t.cleaning["items_without_metadata"] == t.cleaning["titles_from_id"] == 148
        assert t.summary()["items_with_metadata"] == 0 and len(t.summary()["warnings"]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)  # the real pair of files raises no warning
        load_tables("amazon", amazon_dir.parent, category="Gift_Cards", cache=False)


# ---------------------------------------------------------------- ML-100K truncated, timestamps cut short

@pytest.mark.parametrize("name, keep, what, stated", [
    ("u.data", 99_000, "ratings", "100,000"), ("u.item", 1_600, "items", "1,682"), ("u.user", 900, "users", "943"),
])
def test_ml100k_cut_at_a_line_break_is_caught_by_u_info(ml100k_dir, tmp_path, name, keep, what, stated):
    d = copy_ml100k(ml100k_dir, tmp_path)
    lines = (d / name).read_bytes().split(b"\n")
    (d / name).write_bytes(b"\n".join(lines[:keep]) + b"\n")
    with pytest.raises(DataError, match=rf"{re.escape(name)}: {keep:,} {what}, but .*u\.info states {stated}"):
        load_tables("ml-100k", tmp_path, cache=False)


def test_ml100k_without_u_info_warns_that_counts_are_unchecked(ml100k_dir, tmp_path):
    d = copy_ml100k(ml100k_dir, tmp_path)
    (d / "u.info").unlink()
    with pytest.warns(DataWarning, match=r"u\.info not found"):
        assert len(load_tables("ml-100k", tmp_path, cache=False).interactions) == 100_000


def test_ml1m_readme_counts_are_checked(shared_data, tmp_path):
    d = tmp_path / "ml-1m"
    d.mkdir()
    for f in ("movies.dat", "users.dat", "README"):
        shutil.copy(shared_data / "ml-1m" / f, d)
    (d / "ratings.dat").write_text("1::1193::5::978300760\n1::661::3::978302109\n")
    with pytest.raises(DataError, match=r"ratings\.dat: 2 ratings, but .*README states 1,000,209"):
        load_tables("ml-1m", tmp_path, cache=False)


@pytest.mark.parametrize("line, words", [
    ("196\t242\t3\t88125\n", r"u\.data:3: timestamp 88125 outside 1995-01-01"),  # 881250949 cut short
    ("196\t242\t3\t8812509490000\n", r"u\.data:3: timestamp 8812509490000 outside"),
    ("196\t242\t3.5\t881250949\n", r"u\.data:3: non-integer rating"),
    ("196\t0\t3\t881250949\n", r"u\.data:3: item id out of range"),
    ("196\t1999\t3\t881250949\n", r"u\.data:3: movie 1999 is not in u\.item"),
])
def test_implausible_ratings_lines_are_rejected(ml100k_dir, tmp_path, line, words):
    d = copy_ml100k(ml100k_dir, tmp_path)
    lines = (d / "u.data").read_text().splitlines(keepends=True)
    lines[2] = line  # same line count, so u.info agrees
    (d / "u.data").write_text("".join(lines))
    with pytest.raises(DataError, match=words):
        load_tables("ml-100k", tmp_path, cache=False)


# ---------------------------------------------------------------- empty, non-UTF-8, corrupt gzip

def _empty(d):
    (d / "u.data").write_bytes(b"")
    return d / "u.data"


def _stray_byte(d):
    data = (d / "u.data").read_bytes()
    pos = data.index(b"\n", 200) + 3  # inside a line
    (d / "u.data").write_bytes(data[:pos] + b"\xff" + data[pos:])
    return d / "u.data"


@pytest.mark.parametrize("corrupt, words", [(_empty, "the file is empty"), (_stray_byte, "non-ASCII byte 0xff")])
def test_empty_or_non_utf8_u_data_is_one_data_error(ml100k_dir, tmp_path, corrupt, words):
    path = corrupt(copy_ml100k(ml100k_dir, tmp_path))
    with pytest.raises(DataError, match=words) as err:
        load_tables("ml-100k", tmp_path, cache=False)
    _one_line_error_naming(err.value, path)


def test_corrupt_gzip_is_one_data_error(amazon_dir, tmp_path):
    d = tmp_path / "amazon-2018"
    d.mkdir()
    for f in ("Gift_Cards_5.json.gz", "meta_Gift_Cards.json.gz"):
        data = bytearray((amazon_dir / f).read_bytes())
        data[1000] ^= 0xFF  # inside the deflate stream
        with pytest.raises(zlib.error):  # what the readers used to let through
            gzip.decompress(bytes(data))
        (d / f).write_bytes(bytes(data))
        if f.startswith("meta"):
            shutil.copy(amazon_dir / "Gift_Cards_5.json.gz", d)
        with pytest.raises(DataError, match=r"cannot read \(zlib\.error: .*download it again") as err:
            load_tables("amazon", tmp_path, category="Gift_Cards", cache=False)
        _one_line_error_naming(err.value, d / f)


def test_corrupt_member_of_the_official_zip_is_one_data_error(ml100k_dir, tmp_path):
    import zipfile

    with zipfile.ZipFile(tmp_path / "ml-100k.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        for f in ML100K_FILES:
            zf.write(ml100k_dir / f, f"ml-100k/{f}")
    data = bytearray((tmp_path / "ml-100k.zip").read_bytes())
    data[5000] ^= 0xFF  # inside u.data's deflate stream
    (tmp_path / "ml-100k.zip").write_bytes(bytes(data))
    with pytest.raises(DataError, match="not a valid zip archive") as err:
        load_tables("ml-100k", tmp_path)
    _one_line_error_naming(err.value, tmp_path / "ml-100k.zip")


def test_cli_prints_one_line_for_a_broken_file(ml100k_dir, tmp_path):
    path = _empty(copy_ml100k(ml100k_dir, tmp_path / "data"))
    env = {**os.environ, "REASONREC_CACHE_DIR": str(tmp_path / "cache")}
    r = subprocess.run([sys.executable, "-m", "reasonrec", "data", "tables", "-d", "ml-100k", "--data-dir",
                        str(tmp_path / "data")], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and str(path) in r.stderr


# ---------------------------------------------------------------- the table cache is keyed by content

def test_same_size_same_mtime_edit_is_not_served_from_the_cache(ml100k_dir, tmp_path):
    d = copy_ml100k(ml100k_dir, tmp_path)
    first = load_tables("ml-100k", tmp_path)
    st = os.stat(d / "u.data")
    data = (d / "u.data").read_bytes()
    (d / "u.data").write_bytes(data.replace(b"196\t242\t3\t", b"196\t242\t5\t", 1))
    os.utime(d / "u.data", ns=(st.st_atime_ns, st.st_mtime_ns))  # size and mtime as before
    assert os.stat(d / "u.data").st_size == st.st_size and os.stat(d / "u.data").st_mtime_ns == st.st_mtime_ns
    again = load_tables("ml-100k", tmp_path)
    assert (first.interactions["rating"].iloc[0], again.interactions["rating"].iloc[0]) == (3.0, 5.0)
    assert again.checksums["u.data"] != first.checksums["u.data"]
    assert len(list((tmp_path / "cache" / "tables").iterdir())) == 2


# ---------------------------------------------------------------- credentials in URLs

def test_redact_url():
    assert redact_url("https://alice:s3cret@mirror.example/ml-1m.zip") == "https://***@mirror.example/ml-1m.zip"
    assert redact_url("https://TOKEN123@host/x.zip") == "https://***@host/x.zip"
    assert (redact_url("https://h/x.zip?X-Amz-Signature=abc&part=2&api_key=k")
            == "https://h/x.zip?X-Amz-Signature=***&part=2&api_key=***")
    assert redact_url("https://files.grouplens.org/a.zip") == "https://files.grouplens.org/a.zip"


class _AuthHandler(http.server.SimpleHTTPRequestHandler):
    expected = "Basic " + base64.b64encode(b"alice:s3cret").decode()

    def do_GET(self):  # noqa: N802 (http.server's name)
        if self.headers.get("Authorization") != self.expected:
            self.send_response(401)
            self.end_headers()
            return
        super().do_GET()

    def log_message(self, *args):
        pass


def test_credentials_in_a_url_are_used_and_never_echoed(ml100k_dir, tmp_path):
    import zipfile

    root = tmp_path / "www"
    root.mkdir()
    with zipfile.ZipFile(root / "ml-100k.zip", "w") as zf:
        for f in ML100K_FILES + ("u.occupation",):
            zf.write(ml100k_dir / f, f"ml-100k/{f}")
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_AuthHandler, directory=str(root)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    base = f"127.0.0.1:{httpd.server_address[1]}"
    try:
        for url in (f"http://alice:wrong-pw@{base}/ml-100k.zip", f"http://alice:s3cret@{base}/missing.zip"):
            with pytest.raises(DataError, match=r"cannot download ml-100k from http://\*\*\*@127\.0\.0\.1") as err:
                fetch("ml-100k", tmp_path / "data", url=url)
            assert "wrong-pw" not in str(err.value) and "s3cret" not in str(err.value) and "alice" not in str(err.value)
        folder = fetch("ml-100k", tmp_path / "data", url=f"http://alice:s3cret@{base}/ml-100k.zip")
        assert (folder / "u.data").is_file()  # the credentials were sent as Basic auth
        with pytest.raises(DataError, match=r"\*\*\*@127\.0\.0\.1.*: sha256 mismatch") as err:
            fetch("ml-100k", tmp_path / "d2", url=f"http://alice:s3cret@{base}/ml-100k.zip", sha256="0" * 64)
        assert "s3cret" not in str(err.value)
    finally:
        httpd.shutdown()
        httpd.server_close()
