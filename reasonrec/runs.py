"""Run directories and resumable stages.

A run directory holds one experiment: ``config.yaml`` (resolved), ``manifest.json`` (package versions, data
checksums) and one sub-folder per stage. A stage is complete when its ``_SUCCESS.json`` exists and every
artifact it lists is present with the recorded size; a complete stage is skipped, an incomplete one is run
again and resumes from whatever partial state it keeps (e.g. the LLM generation cache).

Usage::

    run = RunDir("runs/r4ec-ml100k")
    with run.stage("samples") as st:
        if not st.done:
            write_parquet(st.path / "train.parquet", df)
            st.complete(["train.parquet"])
"""

from __future__ import annotations

import json
import platform
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from . import io
from .errors import StageError

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

    @property
    def marker(self) -> Path:
        return self.path / "_SUCCESS.json"

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
        return True

    def complete(self, artifacts: list[str], **info: Any) -> None:
        """Mark the stage complete; ``artifacts`` are paths relative to the stage folder."""
        sizes = {}
        for rel in artifacts:
            p = self.path / rel
            if not p.exists():
                raise StageError(f"stage '{self.name}': artifact {p} was declared but not written")
            sizes[rel] = p.stat().st_size if p.is_file() else 0
        io.write_json(self.marker, {"stage": self.name, "artifacts": sizes,
                                    "seconds": round(time.time() - self._started, 3), **info})

    def info(self) -> dict[str, Any]:
        return json.loads(self.marker.read_text()) if self.marker.exists() else {}

    def __enter__(self) -> Stage:
        return self  # RunDir.stage created the folder

    def __exit__(self, *exc) -> None:
        return None


class RunDir:
    """A folder holding one experiment's config, manifest and stage artifacts."""

    def __init__(self, root: str | Path, verbose: bool = True):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.verbose = verbose
        self._announced: set[str] = set()

    def stage(self, name: str) -> Stage:
        st = Stage(self.root / name, name)
        st.path.mkdir(parents=True, exist_ok=True)
        if name not in self._announced:  # stages are looked up again by later stages; say it once
            self._announced.add(name)
            self.log(f"stage {name}: " + ("complete, skipped" if st.done else "running"))
        return st

    def log(self, message: str) -> None:
        """One timestamped line on stderr and in ``log.txt`` (appended: a resumed run keeps its history)."""
        line = f"{time.strftime('%H:%M:%S')} {message}"
        with open(self.root / "log.txt", "a", encoding="utf-8") as f:
            f.write(line + "\n")
        if self.verbose:
            print(line, file=sys.stderr, flush=True)

    def write_config(self, cfg) -> None:
        from .config import dump_yaml

        io.write_text(self.root / "config.yaml", dump_yaml(cfg))

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
