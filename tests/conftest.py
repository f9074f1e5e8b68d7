"""Shared fixtures: the real datasets in ``../shared/data`` and the tiny random model with the real tokenizer."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# CI clones the project with shared/ beside it; a developer may point elsewhere.
SHARED_DATA = Path(os.environ.get("REASONREC_TEST_DATA", REPO.parent / "shared" / "data"))


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        pytest.skip(f"{what} not found at {path} (set REASONREC_TEST_DATA to the folder holding it)")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return _require(SHARED_DATA, "shared test data")


@pytest.fixture(scope="session")
def ml100k_dir(shared_data) -> Path:
    return _require(shared_data / "ml-100k", "MovieLens-100K")


@pytest.fixture(scope="session")
def ml1m_dir(shared_data) -> Path:
    d = shared_data / "ml-1m"
    if not (d / "ratings.dat").exists():
        pytest.skip(f"MovieLens-1M ratings.dat is not in {d}; run `reasonrec data fetch ml-1m` to enable these checks")
    return d


@pytest.fixture(scope="session")
def amazon_dir(shared_data) -> Path:
    return _require(shared_data / "amazon-2018", "Amazon 2018 Gift_Cards")


@pytest.fixture(scope="session")
def tiny_model_path() -> Path:
    """A 2-layer, 64-wide random Llama with SmolLM2's real tokenizer and chat template (built once, cached)."""
    from reasonrec.llm.bundled import tiny_model

    return tiny_model()
