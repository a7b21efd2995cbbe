"""Shared fixtures: the real data in ../shared and a tiny synthetic dataset made once per session."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from lesion_harvester.harvest.ledger import Ledger
from lesion_harvester.io.annotations import write_tracklets
from lesion_harvester.io.deeplesion import DeepLesionDataset
from lesion_harvester.paths import RunLayout
from lesion_harvester.structures import Tracklet

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def load_benchmark(name: str):
    """The script benchmarks/NAME.py as a module (benchmarks/ is no package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_dataset, tmp_path_factory) -> Path:
    """An LPG trained for one epoch of the tiny preset: a real checkpoint, not a good detector."""
    import dataclasses

    from lesion_harvester.config import load_preset
    from lesion_harvester.lpg.train import train_lpg

    preset = load_preset("tiny")
    preset = dataclasses.replace(preset, lpg_train=dataclasses.replace(preset.lpg_train, epochs=1))
    out = tmp_path_factory.mktemp("lpg")
    train_lpg(tiny_dataset, out, preset, cache_dir=out / "cache", progress=False)
    return out / "best.pt"


def _marked_volume(data):
    """A harvest volume with a mark, and that mark."""
    splits = json.loads((data / "splits.json").read_text())
    marks = DeepLesionDataset(data).marks(splits["harvest"])
    key = next(k for k in splits["harvest"] if marks[k])
    return key, marks[key][0].slice_box()


def label_run(tmp_path, data, with_outputs=True):
    """A harvest run folder as a finished harvest leaves it, for the label sets of Table III: the
    ledger's record of the data and V_M's file, harvested.pkl (a new lesion, and one that is a marked
    lesion) and hard_negatives.pkl. Returns (its RunLayout, the volume of those lesions)."""
    layout = RunLayout(tmp_path / "run")
    ledger = Ledger(layout.ledger)
    ledger.set_meta("data", str(data.resolve()))
    ledger.set_meta("fully_annotated_file", "")
    ledger.close()
    key, mark = _marked_volume(data)
    x1, y1, x2, y2 = mark.box_xyxy_px
    z = mark.z_index
    on_the_mark = Tracklet(np.array([z - 1, z, z + 1]), np.tile([x1 - 1, y1, x2 + 1, y2], (3, 1)).astype(float),
                           np.array([0.5, 0.9, 0.6]))
    elsewhere = Tracklet.single_slice(z, [5.0, 5.0, 15.0, 15.0], 0.8)
    negative = Tracklet.single_slice(z, [30.0, 30.0, 40.0, 40.0], 0.7)
    if with_outputs:
        write_tracklets(layout.harvested, {key: [on_the_mark, elsewhere]})
        write_tracklets(layout.hard_negatives, {key: [negative]})
    return layout, key


def tiny_harvest_preset(rounds: int):
    """The tiny preset for ``rounds`` harvest rounds, quicker (no Fig. 5b LPC variants)."""
    import dataclasses

    from lesion_harvester.config import load_preset

    preset = load_preset("tiny")
    return dataclasses.replace(preset, harvest=dataclasses.replace(preset.harvest, rounds=rounds, lpc_variants=False))


@pytest.fixture(scope="session")
def tiny_harvest_run(tiny_dataset, tmp_path_factory) -> Path:
    """One round of a tiny harvest of ``tiny_dataset`` (read-only: copy it before writing verdicts);
    continue a copy with ``tiny_harvest_preset(2)`` and the cache folder beside it."""
    from lesion_harvester.harvest.rounds import harvest

    out = tmp_path_factory.mktemp("harvest") / "run"
    harvest(tiny_dataset, out, tiny_harvest_preset(1), device="cpu", progress=False, cache_dir=out.parent / "cache")
    return out
