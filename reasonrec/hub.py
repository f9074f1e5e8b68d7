"""Hugging Face hub ids resolved from the local cache only (runs are offline; nothing is downloaded here).

One place for the look-up and for the advice a missing id gets, so the model loaders, the encoder loader and
the pre-run checks (:mod:`reasonrec.checks`) say the same thing.
"""

from __future__ import annotations

import re
from pathlib import Path

# owner/name as the hub spells repository ids (letters, digits, '-', '_', '.'; at most one '/').
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def looks_like_hub_id(name: str) -> bool:
    """``owner/name`` that is not an existing local path (``./x/y`` or ``runs/adapter`` would be paths)."""
    return bool(_HUB_ID.match(name)) and not Path(name).expanduser().exists()


def hub_snapshot(repo_id: str) -> Path | None:
    """The folder of ``repo_id``'s cached snapshot, or ``None`` when the local cache does not hold it.

    Read at call time from ``huggingface_hub.constants`` (``HF_HUB_CACHE`` / ``HF_HOME``)."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError:  # pragma: no cover - transformers depends on huggingface_hub
        return None
    try:
        path = Path(snapshot_download(repo_id, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None
    # A snapshot folder can exist with only some files (an interrupted download): require the model config.
    return path if (path / "config.json").exists() else None


def download_hint(repo_id: str) -> str:
    return f"download it with `huggingface-cli download {repo_id}`"
