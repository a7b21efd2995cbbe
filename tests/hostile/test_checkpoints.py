"""Hostile LPG checkpoints: truncated, foreign, refused, self-contradicting or asking for absurd sizes.
Each is one line naming the file and the problem, exit code 2, before a model is built.

The checkpoints are made by hand (the model's own ``model_payload`` over random weights of the tiny
preset), so no test trains."""

from __future__ import annotations

import pathlib
import re
from pathlib import Path

import pytest

from lesion_harvester.config import load_preset
from lesion_harvester.lpg.checkpoint import model_payload, save_checkpoint
from tests.hostile.test_configs import cli_error


def tiny_payload() -> dict:
    """A checkpoint of the tiny preset's LPG with random weights."""
    from lesion_harvester.lpg.model import MSCN

    preset = load_preset("tiny")
    return model_payload(MSCN(preset.lpg), preset.lpg, preset.preprocess, preset.stack, epoch=0, preset="tiny")


def write_checkpoint(path: Path, payload: dict | None = None) -> Path:
    save_checkpoint(path, payload if payload is not None else tiny_payload())
    return path


@pytest.fixture(scope="module")
def payload() -> dict:
    return tiny_payload()


def _propose_error(capsys, tmp_path: Path, checkpoint: Path) -> str:
    """``propose`` with ``checkpoint``: it is read before the data (which does not exist here)."""
    out = tmp_path / "dets.pkl"
    line = cli_error(capsys, ["propose", tmp_path / "no_data", "--checkpoint", checkpoint, "--out", out])
    assert f"error: {checkpoint}" in line, line
    assert not out.exists() and not out.with_suffix(".csv").exists()
    return line


def _changed(payload: dict, section: str, **settings) -> dict:
    return {**payload, section: {**payload[section], **settings}}


# --- files that are not (whole) checkpoints ---------------------------------------------------------


def test_a_truncated_checkpoint_says_so(tmp_path, capsys, payload):
    whole = write_checkpoint(tmp_path / "whole.pt", payload).read_bytes()
    for cut in (len(whole) // 2, 100, len(whole) - 10):
        path = tmp_path / f"cut_{cut}.pt"
        path.write_bytes(whole[:cut])
        line = _propose_error(capsys, tmp_path, path)
        assert "not a loadable checkpoint: truncated or damaged (torch cannot read this zip archive of" in line, line
        assert "Invalid argument" not in line


@pytest.mark.parametrize("content, expected", [
    (b"", "not a loadable checkpoint: empty file"),
    (b"model weights\n" * 10, "not a loadable checkpoint: torch cannot read these 140 bytes (truncated, or not a "
                               "PyTorch file)"),
])
def test_an_empty_or_foreign_file_says_so(tmp_path, capsys, content, expected):
    path = tmp_path / "x.pt"
    path.write_bytes(content)
    assert expected in _propose_error(capsys, tmp_path, path)


def test_a_checkpoint_holding_other_objects_is_refused_without_torchs_advice(tmp_path, capsys, payload):
    path = write_checkpoint(tmp_path / "odd.pt", {**payload, "note": pathlib.PurePosixPath("/etc")})
    for argv in (["info", path], ["propose", tmp_path / "no_data", "--checkpoint", path, "--out", tmp_path / "d.pkl"]):
        line = cli_error(capsys, argv)
        assert (f"{path}: not a loadable checkpoint: refused, the file holds 'pathlib.PurePosixPath', which a "
                "checkpoint must not hold (loading such objects could run code)") in line, line
        # torch's own text advises loading it unrestricted, which would run the code it carries
        assert "weights_only" not in line and "add_safe_globals" not in line


# --- checkpoints that contradict themselves ---------------------------------------------------------


@pytest.mark.parametrize("change, expected", [
    ({"growth_rate": 6}, "block1.denselayer1.layers.conv1.weight is [16, 8, 1, 1] in the file, [24, 8, 1, 1] in "
                         "the model"),
    ({"num_slices": 3}, "weights such as fuse_a.weight are not in the model"),
    ({"output_stride": 2}, "it lacks lat0.weight [16, 8, 1, 1]"),
])
def test_settings_that_do_not_match_the_weights_name_the_first_tensor(tmp_path, capsys, payload, change, expected):
    path = write_checkpoint(tmp_path / "mismatch.pt", _changed(payload, "model_config", **change))
    line = _propose_error(capsys, tmp_path, path)
    assert "the LPG checkpoint's weights do not fit the model its settings (model_config) describe" in line
    assert expected in line, line


@pytest.mark.parametrize("section, change, expected", [
    ("preprocess", {"spacing_mm": 0.0}, "preprocess: spacing_mm: expected a number > 0, got 0.0"),  # was ZeroDivision
    ("preprocess", {"window_hu": [240.0, -160.0]}, "preprocess: window_hu: expected [low, high] in HU"),
    ("stack", {"score_threshold": float("nan")}, "stack: score_threshold: expected a finite number, got nan"),
    ("model_config", {"block_config": [2, 2]}, "model_config: block_config: expected 3 dense blocks"),
])
def test_settings_out_of_range_in_a_checkpoint(tmp_path, capsys, payload, section, change, expected):
    path = write_checkpoint(tmp_path / "bad.pt", _changed(payload, section, **change))
    assert expected in _propose_error(capsys, tmp_path, path)


@pytest.mark.parametrize("missing", ["model_config", "preprocess", "state_dict"])
def test_a_checkpoint_missing_a_part(tmp_path, capsys, payload, missing):
    path = write_checkpoint(tmp_path / "part.pt", {k: v for k, v in payload.items() if k != missing})
    line = _propose_error(capsys, tmp_path, path)
    assert (f"without its '{missing}' settings" if missing != "state_dict" else "without weights") in line, line


# --- sizes: refused before anything is built ---------------------------------------------------------

def _memory_kib() -> dict[str, int]:
    status = Path("/proc/self/status").read_text()
    return {k: int(re.search(rf"{k}:\s+(\d+)", status).group(1)) for k in ("VmRSS", "VmHWM")}


def _peak_growth_mb(action) -> float:
    """How far ``action()`` raises this process's peak resident memory above its resident memory
    before, in MB. The kernel's high-water mark is reset first (Linux), so an earlier peak hides
    nothing; tracemalloc would not do: torch allocates outside Python's allocator."""
    clear_refs = Path("/proc/self/clear_refs")
    if not clear_refs.exists():
        pytest.skip("needs Linux's /proc/self/clear_refs to measure peak memory")
    clear_refs.write_text("5")  # VmHWM := VmRSS
    before = _memory_kib()["VmRSS"]
    action()
    return (_memory_kib()["VmHWM"] - before) / 1024


def test_absurd_model_sizes_are_refused_before_the_model_is_built(tmp_path, capsys, payload):
    from lesion_harvester.errors import LesionHarvesterError
    from lesion_harvester.lpg.model import load_model

    hostile = {
        # init_features 200000 tried to allocate 640 GB: out of its range
        "wide.pt": ({"init_features": 200000}, "model_config: init_features: expected a channel count in [1, 4096]"),
        # each size in range, together 4.4 billion parameters
        "deep.pt": ({"init_features": 1000, "growth_rate": 256, "block_config": [64, 64, 64]},
                    "model_config: these sizes describe an LPG of"),
        # the paper's sizes (a legitimate model of 7 million parameters) over the tiny weights
        "paper.pt": ({"init_features": 64, "growth_rate": 32, "block_config": [6, 12, 24], "neck_channels": 512,
                      "head_channels": 64}, "weights do not fit"),
    }
    paths = [write_checkpoint(tmp_path / name, _changed(payload, "model_config", **change))
             for name, (change, _) in hostile.items()]
    for path, (_, expected) in zip(paths, hostile.values()):
        assert expected in _propose_error(capsys, tmp_path, path)
    load_model(write_checkpoint(tmp_path / "sane.pt", payload))  # first-call set-ups are not what is measured

    def load_all():
        for path in paths:
            with pytest.raises(LesionHarvesterError):
                load_model(path)

    grew = _peak_growth_mb(load_all)
    assert grew < 200, f"loading the hostile checkpoints raised the peak memory by {grew:.0f} MB"
