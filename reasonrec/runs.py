"""Run directories and resumable stages.

A run directory holds one experiment: ``config.yaml`` (resolved), ``manifest.json`` (package versions, data
checksums) and one sub-folder per stage. A stage is complete when its ``_SUCCESS.json`` exists, every
artifact it lists is present with the recorded size, and the stage's *fingerprint* still matches; a complete
stage is skipped, an incomplete one is run again and resumes from whatever partial state it keeps (e.g. the
LLM generation cache).

The fingerprint (config drift): a stage names what it depends on — the config fields it reads
(``depends={"rec.backbones": [...], ...}``) and the upstream stages whose artifacts it reads
(``after=["infer"]``); the sha256 of those artifacts, recorded in the upstream ``_SUCCESS.json``, enters the
fingerprint. When a rerun finds a marker (or the ``_STARTED.json`` of an interrupted attempt) with another
fingerprint, the stage folder is cleared and the stage recomputed, and the log names the keys that changed.
Every stage downstream then sees changed input checksums and is recomputed too, so results never come from
another config. (Design choice: recompute rather than refuse, because the LLM cache is keyed by model and
prompt, so only the work that really changed is redone; a run that must keep its old results should use a new
``--run-dir``.)

One process at a time: :meth:`RunDir.lock` takes an exclusive ``fcntl`` lock on ``.lock`` for the life of the
run. The kernel drops the lock when the process exits, however it dies, so a stale lock of a dead process
cannot block a rerun; the file records pid, host and start time for the refusal message.

Usage::

    run = RunDir("runs/r4ec-ml100k")
    with run.lock():
        st = run.stage("samples", depends={"data.seed": 0}, after=["data"])
        if not st.done:
            write_parquet(st.path / "train.parquet", df)
            st.complete(["train.parquet"])
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import platform
import shutil
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from . import io, progress
from .errors import RunLockedError, StageError

TRACKED_PACKAGES = (
    "reasonrec", "torch", "transformers", "peft", "trl", "accelerate", "sentence-transformers", "pandas",
    "pyarrow", "numpy", "scikit-learn", "pydantic", "llama-cpp-python", "vllm", "openai",
)


def package_versions(names=TRACKED_PACKAGES) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


@dataclass
class Stage:
    """One stage's folder inside a run directory."""

    path: Path
    name: str
    _started: float = field(default_factory=time.time)
    depends: dict[str, Any] | None = None  # None: a look-up by a later stage, no fingerprint check
    on_complete: Any = None  # RunDir's hook: the label goes back to the stage this one ran inside

    @property
    def marker(self) -> Path:
        return self.path / "_SUCCESS.json"

    @property
    def started_marker(self) -> Path:
        return self.path / "_STARTED.json"

    @property
    def fingerprint(self) -> str | None:
        return None if self.depends is None else _digest(self.depends)

    @property
    def done(self) -> bool:
        if not self.marker.exists():
            return False
        try:
            info = json.loads(self.marker.read_text())
        except json.JSONDecodeError:
            return False
        for rel, size in info.get("artifacts", {}).items():
            p = self.path / rel
            if not p.exists() or (p.is_file() and p.stat().st_size != size):
                return False
        return self.fingerprint is None or info.get("fingerprint") == self.fingerprint

    def complete(self, artifacts: list[str], **info: Any) -> None:
        """Mark the stage complete; ``artifacts`` are paths relative to the stage folder. Their sha256 is
        recorded, so the stages that read them notice when they change."""
        sizes, digests = {}, {}
        for rel in artifacts:
            p = self.path / rel
            if not p.exists():
                raise StageError(f"stage '{self.name}': artifact {p} was declared but not written")
            sizes[rel] = p.stat().st_size if p.is_file() else 0
            digests[rel] = _tree_sha256(p)
        extra = {} if self.depends is None else {"fingerprint": self.fingerprint, "depends": self.depends}
        io.write_json(self.marker, {"stage": self.name, "artifacts": sizes, "sha256": digests,
                                    "seconds": round(time.time() - self._started, 3), **extra, **info})
        if self.on_complete is not None:
            self.on_complete(self.name)

    def info(self) -> dict[str, Any]:
        return json.loads(self.marker.read_text()) if self.marker.exists() else {}

    def __enter__(self) -> Stage:
        return self  # RunDir.stage created the folder

    def __exit__(self, *exc) -> None:
        return None


def _clock(seconds: float) -> str:
    """``"1:02:03"`` / ``"4:05"``."""
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _tree_sha256(path: Path) -> str:
    """sha256 of a file, or of a folder's relative paths and file contents (sorted, so it is stable)."""
    if path.is_file():
        return io.sha256_file(path)
    h = hashlib.sha256()
    for p in sorted(q for q in path.rglob("*") if q.is_file()):
        h.update(f"{p.relative_to(path).as_posix()}\0{io.sha256_file(p)}\0".encode())
    return h.hexdigest()


def _changed_keys(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The config keys (``rec.backbones``) and input artifacts (``infer/user.parquet``) that differ."""
    def flat(d: dict[str, Any]) -> dict[str, Any]:
        out = dict(d.get("config", {}))
        for up, arts in d.get("inputs", {}).items():
            out.update({f"{up}/{a}": h for a, h in arts.items()})
        return out

    a, b = flat(old), flat(new)
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def config_fields(cfg: Any, *paths: str, prefix: str = "") -> dict[str, Any]:
    """``{"rec.backbones": [...], ...}`` for dotted ``paths`` into a config section; a path naming a section
    takes every field of it. Values in JSON mode, as ``config.yaml`` shows them; ``prefix`` names ``cfg``
    itself when it is a sub-section (``prefix="data."``)."""
    out: dict[str, Any] = {}
    for path in paths:
        node = cfg
        for part in path.split("."):
            node = getattr(node, part)
        if hasattr(node, "model_dump"):
            out.update({f"{prefix}{path}.{k}": v for k, v in node.model_dump(mode="json").items()})
        else:
            out[f"{prefix}{path}"] = json.loads(json.dumps(node, default=str))
    return out


class RunDir:
    """A folder holding one experiment's config, manifest and stage artifacts."""

    def __init__(self, root: str | Path, verbose: bool = True, stages: Sequence[str] = ()):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.verbose = verbose
        # the method's stage order, when it declares one: stages are then counted ("stage 3/6 infer")
        self.stages = list(stages)
        # expected relative cost of each declared stage (a method's measured stage seconds); missing = 1
        self.stage_weights: dict[str, float] = {}
        self._t0 = time.time()  # the whole-run ETA extrapolates from the stages this process has run
        self._ran: list[str] = []
        self._running: list[str] = []  # announced, not complete: a stage can run inside another (TrackRec)
        self._announced: set[str] = set()
        self._current = ""  # the stage now running: the one a warning belongs to
        self._lock_fd: int | None = None

    # ------------------------------------------------------------------ the lock

    @property
    def lock_path(self) -> Path:
        return self.root / ".lock"

    def acquire(self) -> None:
        """Take the run's exclusive lock or raise :class:`RunLockedError` naming the process that holds it."""
        if self._lock_fd is not None:
            return
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            # flock, not a pid file: the kernel releases it when the holder dies (even by kill -9), so a stale
            # lock never outlives its process and no pid-liveness guess is needed.
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
            os.close(fd)
            try:
                who = json.loads(holder)
                desc = f"pid {who.get('pid')} on host {who.get('host')} since {who.get('since')}"
            except json.JSONDecodeError:
                desc = "another process"
            raise RunLockedError(f"run directory {self.root} is in use by {desc}; wait for that run to finish "
                                 f"(or stop it), or pass another --run-dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                  "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}).encode(), 0)
        self._lock_fd = fd

    def release(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    @contextlib.contextmanager
    def lock(self) -> Iterator[RunDir]:
        self.acquire()
        try:
            yield self
        finally:
            self.release()

    # ------------------------------------------------------------------ stages

    def stage(self, name: str, depends: dict[str, Any] | None = None, after: Sequence[str] = ()) -> Stage:
        """The stage folder ``name``. With ``depends`` (the config fields it reads) and ``after`` (the upstream
        stages whose artifacts it reads) a stage whose fingerprint changed is cleared and recomputed; without
        them it is a look-up of an earlier stage."""
        fp_parts = None
        if depends is not None or after:
            inputs = {}
            for up in after:
                info = Stage(self.root / up, up).info()
                if "sha256" not in info:
                    raise StageError(f"stage '{name}' reads stage '{up}', which is not complete in {self.root}")
                inputs[up] = info["sha256"]
            fp_parts = {"config": dict(depends or {}), "inputs": inputs}
        st = Stage(self.root / name, name, depends=fp_parts)
        st.path.mkdir(parents=True, exist_ok=True)
        if fp_parts is not None and not st.done:
            self._clear_if_stale(st)
        if name not in self._announced:  # stages are looked up again by later stages; say it once
            self._announced.add(name)
            eta = ""
            if not st.done:
                self._current = name
                eta = self.eta(name)
                # what the progress bars of this stage's work say: "stage 4/6 infer · run ≈ 12 min left"
                progress.set_stage(self.stage_label(name) + (f" · {eta}" if eta else ""))
                self.clear_warnings(name)  # this attempt says them again, if they still hold
                self._ran.append(name)
                self._running.append(name)
                st.on_complete = self._completed
            count = f" [{self.stages.index(name) + 1}/{len(self.stages)}]" if name in self.stages else ""
            self.log(f"stage {name}: " + ("complete, skipped" if st.done else "running") + count
                     + (f" · {eta}" if eta else ""))
        return st

    def _completed(self, name: str) -> None:
        """A stage finished: the bars (and warnings) of the work that follows belong to the stage it ran inside."""
        if name in self._running:
            self._running.remove(name)
        if self._running and self._current == name:
            self._current = self._running[-1]
            progress.set_stage(self.stage_label(self._current))

    def stage_label(self, name: str) -> str:
        """``"stage 3/6 infer"`` when the run declared its stages, else ``"stage infer"``."""
        if name in self.stages:
            return f"stage {self.stages.index(name) + 1}/{len(self.stages)} {name}"
        return f"stage {name}"

    def eta(self, starting: str) -> str:
        """``"run 3:05 elapsed, ≈ 12 min left"`` as stage ``starting`` begins: the wall time this process has
        spent since the run started (stages, and the work between them such as trainings), per unit of
        :attr:`stage_weights` of the declared stages it has run, times the weight of the declared stages not
        complete yet (this one included). Empty before the first stage has run, or without declared stages.
        An extrapolation, as good as the weights: they come from one measured run of the method."""
        if starting not in self.stages or not self._ran:
            return ""
        w = lambda n: float(self.stage_weights.get(n, 1.0))  # noqa: E731
        elapsed = time.time() - self._t0
        ran = sum(w(n) for n in self._ran if n in self.stages)
        rest = [n for n in self.stages[self.stages.index(starting):]
                if n == starting or (n not in self._ran and not Stage(self.root / n, n).done)]
        if ran <= 0:
            return ""
        left = elapsed / ran * sum(w(n) for n in rest)
        return f"run {_clock(elapsed)} elapsed, ≈ {_clock(left)} left"

    def step(self, label: str):
        """``with run.step("user refinement"):`` names the work the progress bars inside show."""
        return progress.step(label)

    # ------------------------------------------------------------------ warnings

    @property
    def warnings_path(self) -> Path:
        return self.root / "warnings.json"

    def warnings(self) -> list[dict[str, str]]:
        """Every warning of the run, ``[{"stage": ..., "message": ...}]`` in the order they were said."""
        if not self.warnings_path.exists():
            return []
        try:
            return list(json.loads(self.warnings_path.read_text()))
        except json.JSONDecodeError:  # written atomically; a damaged file is rewritten by the next warning
            return []

    def warn(self, message: str, stage: str | None = None) -> None:
        """A fallback or degenerate outcome: one ``warning:`` line in the log now, and a record in
        ``warnings.json`` that the final summary and the report show. A complete stage is skipped on rerun,
        so its warnings are kept with the stage they belong to and said again only when it reruns."""
        self.log(f"warning: {message}")
        rec = {"stage": self._current if stage is None else stage, "message": message}
        have = self.warnings()
        if rec not in have:
            io.write_json(self.warnings_path, [*have, rec])

    def clear_warnings(self, stage: str) -> None:
        """Forget the warnings of ``stage`` (it is about to say them again)."""
        have = self.warnings()
        keep = [w for w in have if w.get("stage") != stage]
        if len(keep) != len(have):
            io.write_json(self.warnings_path, keep)

    def _clear_if_stale(self, st: Stage) -> None:
        """Empty the stage folder when its marker or an interrupted attempt was made under other inputs, so
        nothing of the old config (a half-trained checkpoint, a stale artifact) is resumed; then record what
        this attempt runs under."""
        old = None
        for marker in (st.marker, st.started_marker):
            if marker.exists():
                try:  # a marker without a fingerprint (an older reasonrec, a damaged file) counts as changed
                    old = json.loads(marker.read_text()).get("depends") or {}
                except json.JSONDecodeError:
                    old = {}
                break
        if old is not None and _digest(old) != st.fingerprint:
            keys = _changed_keys(old, st.depends or {})
            self.log(f"stage {st.name}: inputs changed since its last run ({', '.join(keys) or 'unknown'}); "
                     "recomputing it (and every stage that reads it)")
            shutil.rmtree(st.path)
            st.path.mkdir(parents=True)
        io.write_json(st.started_marker, {"stage": st.name, "fingerprint": st.fingerprint, "depends": st.depends})

    def log(self, message: str) -> None:
        """One timestamped line on stderr and in ``log.txt`` (appended: a resumed run keeps its history)."""
        line = f"{time.strftime('%H:%M:%S')} {message}"
        with open(self.root / "log.txt", "a", encoding="utf-8") as f:
            f.write(line + "\n")
        if self.verbose:
            print(line, file=sys.stderr, flush=True)

    def write_config(self, cfg) -> None:
        """Write the resolved config. When it differs from the one already there, the run-level results are
        removed first: they belong to the old config and are rewritten when this run completes, so
        ``results.json`` never sits beside a config that did not produce it (even if this run is killed)."""
        from .config import dump_yaml

        text, path = dump_yaml(cfg), self.root / "config.yaml"
        if path.exists() and path.read_text(encoding="utf-8") != text:
            for name in ("results.json", "results.md"):
                (self.root / name).unlink(missing_ok=True)
        io.write_text(path, text)

    def write_manifest(self, data_checksums: dict[str, str] | None = None, **extra: Any) -> None:
        manifest = {
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "packages": package_versions(),
            "data_checksums": data_checksums or {},
            **extra,
        }
        io.write_json(self.root / "manifest.json", manifest)

    def update_manifest(self, **fields: Any) -> None:
        """Add ``fields`` to ``manifest.json`` (written by the data stage) once the run knows them."""
        path = self.root / "manifest.json"
        manifest = json.loads(path.read_text()) if path.exists() else {}
        io.write_json(path, {**manifest, **fields})


def stage_markers(root: Path) -> dict[str, dict[str, Any]]:
    """Every stage's marker, nested stages too (TrackRec's ``cots/<G>``), named by their folder in the run, in the
    order they completed."""
    out = {}
    for marker in sorted(root.rglob("_SUCCESS.json"), key=lambda p: (p.stat().st_mtime, str(p))):
        try:
            out[marker.parent.relative_to(root).as_posix()] = json.loads(marker.read_text())
        except json.JSONDecodeError:  # a marker is written atomically; a broken one is not ours to judge here
            continue
    return out
