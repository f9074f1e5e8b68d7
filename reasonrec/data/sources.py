"""Where raw dataset files come from: the data directory, and ``fetch`` from the official URLs.

Data directory: the ``data_dir`` argument (CLI ``--data-dir``), else ``$REASONREC_DATA_DIR``, else
``<reasonrec cache>/data`` (where ``fetch`` puts downloads by default). Inside it each dataset lives in its own
folder (``ml-100k/``, ``ml-1m/``, ``amazon-2018/`` or ``amazon/``, ``yelp/``); the files may also sit directly in
the data directory, and MovieLens may be the official zip (``ml-1m.zip``), which is extracted into the cache.

``fetch`` downloads from the official host, checks the checksums GroupLens/McAuley publish or that we recorded
from verified copies (sha256 of every file; the MovieLens zips' published MD5; ML-1M ``ratings.dat``'s git blob
id, the only identifier recorded for it), extracts archives safely, and moves the result into place only when
every check passed. Offline, it raises one DataError saying where to put the files by hand.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from .. import io as rio
from ..errors import DataError

DATA_ENV = "REASONREC_DATA_DIR"


@dataclass(frozen=True)
class Source:
    """One downloadable dataset: the files to fetch and the checksums every resulting file must match."""

    folder: str
    urls: tuple[str, ...]
    archive_md5: str | None = None  # published by GroupLens for the zips
    checksums: dict[str, tuple[str, str]] = field(default_factory=dict)  # file -> (algorithm, hex digest)
    what: str = ""


_ML100K_SHA256 = {
    "u.data": "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490",
    "u.item": "553841ebc7de3a0fd0d6b62a204ea30c1e651aacfb2814c7a6584ac52f2c5701",
    "u.user": "f120e114da2e8cf314fd28f99417c94ae9ddf1cb6db8ce0e4b5995d40e90e62c",
    "u.genre": "9757e0d3e6b298159a80dd48eaf938114690e911e39af97a76949ef1663610bb",
    "u.info": "5b0a40b2e47a729ee6203063f6dcf8790c2e63f5a18663e6ee318a72c5f3c27b",
    "u.occupation": "cd5fbec9afe345d993a62fc7817df1a4a9079c4feb267b3118763b8fd942137d",
}
SOURCES: dict[str, Source] = {
    "ml-100k": Source(
        folder="ml-100k", urls=("https://files.grouplens.org/datasets/movielens/ml-100k.zip",),
        archive_md5="0e33842e24a9c977be4e0107933c0723",
        checksums={k: ("sha256", v) for k, v in _ML100K_SHA256.items()},
        what="u.data, u.item, u.user, u.genre (or ml-100k.zip)"),
    "ml-1m": Source(
        folder="ml-1m", urls=("https://files.grouplens.org/datasets/movielens/ml-1m.zip",),
        archive_md5="c4d9eecfca2ab87c1945afe126590906",
        checksums={
            "movies.dat": ("sha256", "0140fc2356357c1a851d0f52e893a1e4d3696df632c4141cea8d5bc3d621f0b9"),
            "users.dat": ("sha256", "1dc3a95300cb19f7c10e027daf29b8cdf1d908dab65b5edfb45950aa389a10a3"),
            "ratings.dat": ("git-blob-sha1", "77a7c4b150f588c23bb9e1f068aa996c0b413695"),
        },
        what="ratings.dat, movies.dat, users.dat (or ml-1m.zip)"),
}
# Amazon 2018 (Ni et al.), now served from the McAuley lab site; per-category 5-core reviews + metadata.
AMAZON_2018_URLS = ("https://mcauleylab.ucsd.edu/public_datasets/data/amazon_v2/categoryFilesSmall/{c}_5.json.gz",
                    "https://mcauleylab.ucsd.edu/public_datasets/data/amazon_v2/metaFiles2/meta_{c}.json.gz")
AMAZON_2018_SHA256 = {
    "Gift_Cards": {"Gift_Cards_5.json.gz": "41e1f0e50d3c1c9d7d949fb6315944c8bde51ea6b7429a29fdd0d02cbc07ef25",
                   "meta_Gift_Cards.json.gz": "07fd154b7275ab9b1537e3802913508c7a5f84ed00f73201cd3fa18b2b51b342"},
}


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    if data_dir is not None:
        return Path(data_dir).expanduser()
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser()
    return rio.cache_dir() / "data"


def source_for(name: str, category: str | None = None) -> Source:
    if name in SOURCES:
        return SOURCES[name]
    if name == "amazon":
        if not category:
            raise DataError("fetch amazon: give the category, e.g. `reasonrec data fetch amazon --category Books`")
        known = AMAZON_2018_SHA256.get(category, {})
        return Source(folder="amazon-2018", urls=tuple(u.format(c=category) for u in AMAZON_2018_URLS),
                      checksums={k: ("sha256", v) for k, v in known.items()},
                      what=f"{category}_5.json.gz and meta_{category}.json.gz")
    raise DataError(f"unknown dataset {name!r} to fetch; choose one of: ml-100k, ml-1m, amazon (with a category)")


def digest(path: Path, algorithm: str) -> str:
    if algorithm == "sha256":
        return rio.sha256_file(path)
    if algorithm == "md5":
        h = hashlib.md5()
    elif algorithm == "git-blob-sha1":  # what `git hash-object` prints
        h = hashlib.sha1()
        h.update(b"blob %d\0" % path.stat().st_size)
    else:
        raise ValueError(algorithm)
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


# query parameters whose values are secrets (API keys, signed-URL signatures such as X-Amz-Signature)
_SECRET_PARAM = re.compile(r"token|key|secret|passw|pwd|sig|auth|credential|session", re.IGNORECASE)


def redact_url(url: str) -> str:
    """``url`` safe to print: user info (``user:pw@``) and secret-looking query values become ``***``."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:  # e.g. a malformed IPv6 host: redact by pattern
        return re.sub(r"//[^/?#]*@", "//***@", url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = "&".join(
        f"{kv.split('=', 1)[0]}=***" if "=" in kv and _SECRET_PARAM.search(kv.split("=", 1)[0]) else kv
        for kv in parts.query.split("&")) if parts.query else ""
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _scrub(text: str, url: str) -> str:
    """``text`` (an error message) with ``url`` and any of its secrets redacted."""
    text = text.replace(url, redact_url(url))
    try:
        parts = urllib.parse.urlsplit(url)
        secrets = [parts.password, parts.username if parts.password is None else None]
    except ValueError:
        secrets = []
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***").replace(urllib.parse.unquote(secret), "***")
    return text


def _request(url: str) -> urllib.request.Request | str:
    """A request for ``url``; credentials in it (``https://user:pw@host/...``) are sent as HTTP Basic auth, not
    as part of the host name, and are not forwarded to the target of a redirect."""
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    req = urllib.request.Request(urllib.parse.urlunsplit((parts.scheme, host, parts.path, parts.query, "")))
    cred = f"{urllib.parse.unquote(parts.username or '')}:{urllib.parse.unquote(parts.password or '')}"
    req.add_unredirected_header("Authorization", "Basic " + base64.b64encode(cred.encode()).decode())
    return req


def url_filename(url: str) -> str:
    """The file name a URL downloads to (its path's last part; never the host, which may hold credentials)."""
    try:
        path = urllib.parse.urlsplit(url).path
    except ValueError:
        path = ""
    return Path(urllib.request.url2pathname(path)).name or "download"


def _download(url: str, dest: Path, name: str, where: Path, what: str) -> None:
    from tqdm import tqdm

    shown = redact_url(url)
    try:
        with urllib.request.urlopen(_request(url), timeout=30) as resp, open(dest, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"fetch {url_filename(url)}", leave=False) as bar:
                while block := resp.read(1 << 20):
                    out.write(block)
                    bar.update(len(block))
            if total is not None and dest.stat().st_size != total:
                raise DataError(f"download of {shown} stopped after {dest.stat().st_size} of {total} bytes; "
                                "run the fetch again")
    except DataError:
        raise
    except ValueError as err:  # http.client.InvalidURL, "unknown url type"
        raise DataError(f"cannot download {name}: {shown} is not a valid URL ({_scrub(str(err), url)})") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError, http.client.HTTPException) as err:
        reason = _scrub(str(getattr(err, "reason", err)), url)
        raise DataError(
            f"cannot download {name} from {shown} ({reason}). Without internet access, copy the official files "
            f"({what}) into {where}/ yourself, or into <DIR>/{Path(where).name}/ and pass --data-dir DIR "
            f"(or set {DATA_ENV}=DIR)") from None


def _safe_extract(archive: Path, into: Path) -> list[Path]:
    try:
        with zipfile.ZipFile(archive) as zf:
            out = []
            for member in zf.infolist():
                target = (into / member.filename).resolve()
                if not str(target).startswith(str(into.resolve()) + os.sep):
                    raise DataError(f"{archive}: member {member.filename!r} would be written outside {into}")
                if member.is_dir():
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(member) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                out.append(target)
            return out
    except (zipfile.BadZipFile, zlib.error, EOFError) as err:  # a corrupt member: bad CRC or deflate data
        raise DataError(f"{archive}: not a valid zip archive ({err}); download it again") from None


def _flatten(into: Path, folder: str) -> Path:
    """The folder holding the dataset's files after extraction (zips carry a top folder, e.g. ``ml-1m/``)."""
    inner = into / folder
    return inner if inner.is_dir() else into


def verify(folder: Path, source: Source) -> dict[str, str]:
    """Check every file with a recorded checksum; return ``{file: sha256}`` for the manifest."""
    out = {}
    for fname, (algo, expected) in source.checksums.items():
        path = folder / fname
        if not path.is_file():
            raise DataError(f"{path}: missing after download; expected files: {', '.join(source.checksums)}")
        got = digest(path, algo)
        if got != expected:
            raise DataError(f"{path}: {algo} checksum mismatch (expected {expected}, got {got}); the file is "
                            "corrupt or not the official release — delete it and fetch again")
        out[fname] = got if algo == "sha256" else rio.sha256_file(path)
    return out


def extract_zip(archive: Path, folder: str, into: Path) -> Path:
    """Extract an official MovieLens zip into ``into`` (atomically) and return the dataset folder."""
    target = into / folder
    if (target / ".extracted").is_file():
        return target
    with rio.atomic_dir(target) as tmp:
        _safe_extract(archive, tmp)
        inner = _flatten(tmp, folder)
        if inner != tmp:
            for p in inner.iterdir():
                os.replace(p, tmp / p.name)
            inner.rmdir()
        (tmp / ".extracted").write_text(str(archive))
    return target


def fetch(name: str, dest: str | os.PathLike | None = None, *, category: str | None = None,
          url: str | None = None, sha256: str | None = None) -> Path:
    """Download dataset ``name`` into ``dest`` (default: the data directory) and return its folder.

    ``url`` replaces the official URL (a mirror; also ``file://``); credentials in it (``https://user:pw@host/``)
    are sent as HTTP Basic auth and redacted in every message (:func:`redact_url`). ``sha256`` is the expected
    digest of the downloaded file. With a mirror the official archive's MD5 is not checked (mirrors may repack the zip), but
    every extracted file is still checked against its recorded checksum.
    """
    source = source_for(name, category)
    root = resolve_data_dir(dest)
    final = root / source.folder
    urls = (url,) if url else source.urls
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=root) as tmpdir:
        tmp = Path(tmpdir)
        staged = tmp / "staged"
        staged.mkdir()
        for u in urls:
            fname = url_filename(u)
            path = tmp / fname
            _download(u, path, name, final, source.what)
            if sha256 and digest(path, "sha256") != sha256:
                raise DataError(f"{redact_url(u)}: sha256 mismatch (expected {sha256}, got {digest(path, 'sha256')})")
            if fname.endswith(".zip"):
                if source.archive_md5 and not url and digest(path, "md5") != source.archive_md5:
                    raise DataError(f"{redact_url(u)}: MD5 {digest(path, 'md5')} differs from the published "
                                    f"{source.archive_md5}; the download is corrupt — fetch again")
                _safe_extract(path, tmp / "x")
                inner = _flatten(tmp / "x", source.folder)
                for p in inner.iterdir():
                    os.replace(p, staged / p.name)
            else:
                os.replace(path, staged / fname)
        sums = verify(staged, source)
        for p in staged.iterdir():
            if p.name not in sums and p.is_file():
                sums[p.name] = rio.sha256_file(p)
        rio.write_json(staged / "CHECKSUMS.json", sums)
        final.mkdir(parents=True, exist_ok=True)
        for p in staged.iterdir():
            os.replace(p, final / p.name)  # per-file rename: a partial fetch never leaves a half-written file
    return final
