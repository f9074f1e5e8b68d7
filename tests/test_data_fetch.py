"""`fetch`: download over HTTP from a local server, checksum verification, zip extraction, offline errors;
and the `reasonrec data` commands."""

from __future__ import annotations

import functools
import http.server
import json
import socket
import subprocess
import sys
import threading
import zipfile

import pandas as pd
import pytest

from reasonrec.data import fetch, load_tables
from reasonrec.errors import DataError

FILES = ("u.data", "u.item", "u.user", "u.genre", "u.info", "u.occupation")


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("REASONREC_CACHE_DIR", str(tmp_path / "cache"))


def _zip(src, path, corrupt=None):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in FILES:
            data = (src / f).read_bytes()
            if f == corrupt:
                data = data.replace(b"881250949", b"881250950", 1)
            zf.writestr(f"ml-100k/{f}", data)
    return path


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_fetch_over_http_verifies_and_extracts(ml100k_dir, tmp_path, server):
    root, base = server
    _zip(ml100k_dir, root / "ml-100k.zip")
    folder = fetch("ml-100k", tmp_path / "data", url=f"{base}/ml-100k.zip")
    assert folder == tmp_path / "data" / "ml-100k"
    sums = json.loads((folder / "CHECKSUMS.json").read_text())
    assert sums["u.data"] == "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490"
    assert not list((tmp_path / "data").glob(".fetch-*"))  # the staging folder is gone
    t = load_tables("ml-100k", tmp_path / "data")
    assert len(t.interactions) == 100_000


def test_fetch_rejects_a_corrupt_file(ml100k_dir, tmp_path, server):
    root, base = server
    _zip(ml100k_dir, root / "ml-100k.zip", corrupt="u.data")
    with pytest.raises(DataError, match=r"u\.data: sha256 checksum mismatch"):
        fetch("ml-100k", tmp_path / "data", url=f"{base}/ml-100k.zip")
    assert not (tmp_path / "data" / "ml-100k" / "u.data").exists()  # nothing moved into place


def test_fetch_checks_a_given_sha256_and_file_urls(ml100k_dir, tmp_path):
    z = _zip(ml100k_dir, tmp_path / "ml-100k.zip")
    with pytest.raises(DataError, match="sha256 mismatch"):
        fetch("ml-100k", tmp_path / "d1", url=z.as_uri(), sha256="0" * 64)
    from reasonrec.io import sha256_file

    assert (fetch("ml-100k", tmp_path / "d2", url=z.as_uri(), sha256=sha256_file(z)) / "u.item").is_file()


def test_offline_fetch_says_where_to_put_the_files(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DataError, match=r"cannot download ml-1m .*copy the official files \(ratings\.dat"):
        fetch("ml-1m", tmp_path, url=f"http://127.0.0.1:{port}/ml-1m.zip")
    with pytest.raises(DataError, match="unknown dataset"):
        fetch("netflix", tmp_path)


def test_official_zip_in_the_data_dir_is_read(ml100k_dir, tmp_path):
    _zip(ml100k_dir, tmp_path / "ml-100k.zip")
    t = load_tables("ml-100k", tmp_path)
    assert len(t.interactions) == 100_000 and t.items["title"].iloc[0] == "Toy Story (1995)"


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "reasonrec", "data", *args], capture_output=True, text=True,
                          env=env, timeout=120)


def test_cli_stats_prepare_and_errors(ml100k_dir, tmp_path, monkeypatch):
    import os

    env = {**os.environ, "REASONREC_CACHE_DIR": str(tmp_path / "cache")}
    r = _cli("stats", "--dataset", "ml-100k", "--protocol", "collm", "--data-dir", str(ml100k_dir.parent), "--json",
             env=env)
    assert r.returncode == 0, r.stderr
    stats = json.loads(r.stdout)
    assert (stats["train"], stats["valid"], stats["test"]) == (66994, 23647, 9359)
    assert {"users", "items", "interactions", "positive_rate"} <= stats.keys()
    out = tmp_path / "prep"
    r = _cli("prepare", "-d", "ml-100k", "-p", "tallrec", "--data-dir", str(ml100k_dir.parent), "--out", str(out),
             "-o", "train_shots=16", env=env)
    assert r.returncode == 0, r.stderr
    assert len(pd.read_parquet(out / "train.parquet")) == 16
    assert json.loads((out / "splits.json").read_text())["options"]["train_shots"] == 16
    from reasonrec.data import Splits

    loaded = Splits.load(out)
    assert len(loaded.test) == 1000 and loaded.stats()["train"] == 16
    r = _cli("stats", "-d", "ml-100k", "-p", "kar", "--data-dir", str(ml100k_dir.parent), "-o", "histroy_len=3",
             env=env)
    assert r.returncode == 2 and "did you mean 'history_len'" in r.stderr and "Traceback" not in r.stderr
    r = _cli("stats", "-d", "ml-100k", "-p", "kar", "--data-dir", str(tmp_path / "empty"), env=env)
    assert r.returncode == 2 and "MovieLens-100K not found" in r.stderr
