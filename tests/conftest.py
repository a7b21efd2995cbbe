"""Shared fixtures: the real data in ../shared and a tiny synthetic dataset made once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def shared_path(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test with a clear message if this checkout lacks it."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available: {path} (the ../shared folder beside the project)")
    return path


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """A tiny synthetic DeepLesion-layout dataset (seed 123), shared by the tests that only read it."""
    from lesion_harvester.config import load_preset
    from lesion_harvester.synth.dataset import write_synthetic_dataset

    out = tmp_path_factory.mktemp("synth") / "tiny"
    write_synthetic_dataset(out, load_preset("tiny").synth, seed=123, progress=False)
    return out
