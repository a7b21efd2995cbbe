"""Hostile presets and settings: each ends in one line on stderr naming the file (or the setting) and
the problem, exit code 2, before any work and before anything is written."""

from __future__ import annotations

import dataclasses
import json
import typing
from importlib import resources
from pathlib import Path

import pytest
import yaml

from lesion_harvester import config
from lesion_harvester.config import PRESETS, MSCNConfig, Preset, apply_overrides, load_preset
from lesion_harvester.errors import ConfigError
from tests.hostile.common import cli_error


def _train_with(capsys, tmp_path: Path, preset: str | Path, *more: str) -> str:
    """``train-lpg`` with ``preset``: the preset is read before the data (which does not exist here)."""
    out = tmp_path / "lpg"
    line = cli_error(capsys, ["train-lpg", tmp_path / "no_data", "--out", out, "--preset", preset, *more])
    assert not out.exists()  # nothing written
    return line


def _yaml(tmp_path: Path, text: str, name: str = "p.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# --- the tester's cases ----------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("- lpg_train\n- epochs\n", "expected a mapping of sections"),  # a preset that is a list
    ("base: tiny\nlpg_train:\n  lr: .nan\n", "lpg_train.lr: expected a finite number, got nan"),
    ("base: tiny\nlpg_train:\n  batch_size: 0\n", "lpg_train.batch_size: expected an integer >= 1, got 0"),
    ("base: tiny\nlpg_train:\n  epochs: -3\n", "lpg_train.epochs: expected an integer >= 1, got -3"),
    ("base: tiny\npreprocess:\n  window_hu: [240, -160]\n", "preprocess.window_hu: expected [low, high] in HU"),
    ("", "empty preset; start it with the preset it changes (base: tiny | demo | bench | paper"),
    ("# only a comment\n", "empty preset"),
    ("lpg_train:\n  epochs: 2\n", "names no base and leaves synth.image_size_px, synth.pixel_mm, "
                                  "synth.slice_intervals_mm and "),
    ("name: mine\n", "names no base"),
])
def test_a_hostile_preset_file_is_one_line_naming_the_file_and_the_problem(tmp_path, capsys, text, expected):
    path = _yaml(tmp_path, text)
    line = _train_with(capsys, tmp_path, path)
    assert line.startswith(f"lesion-harvester train-lpg: error: {path}: ") and expected in line, line


def test_a_partial_preset_is_refused_but_the_same_with_a_base_is_that_base_changed(tmp_path):
    # without a base, 'epochs: 2' silently meant the paper's full-size training (2,000 iterations at 512 px)
    with pytest.raises(ConfigError, match="names no base"):
        load_preset(_yaml(tmp_path, "lpg_train:\n  epochs: 2\n"))
    based = load_preset(_yaml(tmp_path, "base: bench\nlpg_train:\n  epochs: 2\n", "b.yaml"))
    bench = load_preset("bench")
    assert based == dataclasses.replace(bench, name="b", lpg_train=dataclasses.replace(bench.lpg_train, epochs=2))


@pytest.mark.parametrize("name", PRESETS)
def test_a_copy_of_a_built_in_preset_loads_as_that_preset(tmp_path, name):
    # the built-in presets name their base (paper, whose settings are the defaults), so a copy of one
    # is a valid preset file; a copy of paper.yaml is not (it gives only the synth section) and says so
    text = resources.files("lesion_harvester.configs").joinpath(f"{name}.yaml").read_text()
    path = _yaml(tmp_path, text, f"{name}.yaml")
    if name == "paper":
        with pytest.raises(ConfigError, match="names no base") as err:
            load_preset(path)
        assert "(base: tiny | demo | bench | paper; paper's settings are the defaults)" in str(err.value)
    else:
        assert load_preset(path) == load_preset(name)


def test_a_complete_configuration_needs_no_base(tmp_path):
    preset = load_preset("demo")
    config.dump_config(preset, tmp_path / "config.yaml")  # every section and key, as a run writes it
    assert load_preset(tmp_path / "config.yaml") == preset
    data = yaml.safe_load((tmp_path / "config.yaml").read_text())
    del data["lpc"]["epochs"]
    path = _yaml(tmp_path, yaml.safe_dump(data), "short.yaml")
    with pytest.raises(ConfigError, match=r"names no base and leaves lpc\.epochs unset"):
        load_preset(path)


# --- every numeric setting is range-checked ---------------------------------------------------------

# settings any finite value of which is meaningful (checked finite by their type)
UNBOUNDED = {"preprocess.pixel_mean", "preprocess.body_threshold_hu"}


def _numeric_settings() -> list[str]:
    """Every int, float or tuple-of-numbers setting that is not a choice."""
    out = []
    for section, cls in config._section_classes().items():
        for key, hint in typing.get_type_hints(cls).items():
            if typing.get_origin(hint) is typing.Literal:
                continue
            text = str(hint)
            if hint in (int, float) or text.startswith("tuple[") or "float" in text.split("|")[0]:
                out.append(f"{section}.{key}")
    return out


def test_every_numeric_setting_has_a_range():
    settings = _numeric_settings()
    assert "lpg_train.lr" in settings and "synth.pixel_mm" in settings and "lpg.block_config" in settings
    unchecked = [s for s in settings if s not in config._RANGES and s not in config._LOAD_RANGES
                 and s not in UNBOUNDED]
    assert unchecked == []


BAD = [
    ("stack.score_threshold", float("nan")),
    ("stack.score_threshold", 1.5),
    ("stack.score_threshold", -0.1),
    ("stack.link_iou", 1.5),
    ("lpg.init_features", 200000),
    ("lpg.init_features", 0),
    ("lpg.block_config", [2, 2]),
    ("lpg.block_config", [2, 0, 2]),
    ("lpg.neck_channels", -1),
    ("lpg_train.crop_px", 33),
    ("lpg_train.crop_px", -16),
    ("lpg_train.scale_jitter", [1.2, 0.8]),
    ("lpg_train.scale_jitter", [0.0, 1.0]),
    ("lpg_train.momentum", 1.0),
    ("lpg_train.lr_steps", [6, 4]),
    ("lpg_train.seed", -1),
    ("lpg_train.background_fraction", 1.5),
    ("lpg_train.max_objects", 0),
    ("lpg_train.grad_clip", 0.0),
    ("lpg_train.weight_decay", -0.1),
    ("preprocess.context_mm", 0.0),
    ("preprocess.max_size_px", 0),
    ("synth.image_size_px", 0),
    ("synth.pixel_mm", [0.9, 0.6]),
    ("synth.noise_hu", [-1.0, 5.0]),
    ("synth.png_compress_level", 10),
    ("synth.validation", -1),
    ("scan.top_k", 0),
    ("lpc.widen_factor", 0.0),
    ("lpc.patch_px", 0),
    ("lpc.min_objectness", 2.0),
    ("lpc.max_per_volume", 0),
    ("harvest.verify_iou", 0.0),
    ("harvest.hard_min_objectness", -0.5),
    ("harvest.calibration_volumes", -1),
]


def _yaml_value(value) -> str:
    return json.dumps(value).replace("NaN", ".nan")


@pytest.mark.parametrize("setting, value", BAD)
def test_a_value_out_of_range_is_refused_in_a_file_and_with_set(tmp_path, setting, value):
    section, key = setting.split(".")
    path = _yaml(tmp_path, yaml.safe_dump({"base": "tiny", section: {key: value}}))
    with pytest.raises(ConfigError) as err:
        load_preset(path)
    assert str(err.value).startswith(f"{path}: {setting}: expected "), str(err.value)
    with pytest.raises(ConfigError, match=f"^--set: {setting}: expected "):
        apply_overrides(load_preset("tiny"), [f"{setting}={_yaml_value(value)}"])


@pytest.mark.parametrize("change, expected", [
    ({"harvest": 3, "harvest_test": 4}, "synth.harvest_test: expected at most synth.harvest (3)"),
    ({"slice_interval_weights": [1.0]}, "synth.slice_interval_weights: expected one weight per slice interval (2)"),
    ({"harvest": 1}, "synth.harvest_test: expected at most synth.harvest (1)"),  # tiny's harvest_test is 2
    ({"slice_interval_weights": [0.0, 0.0]}, "synth.slice_interval_weights"),
])
def test_settings_that_must_agree_with_each_other(tmp_path, change, expected):
    path = _yaml(tmp_path, yaml.safe_dump({"base": "tiny", "synth": change}))
    with pytest.raises(ConfigError) as err:
        load_preset(path)
    assert str(err.value).startswith(f"{path}: {expected}"), str(err.value)


def test_settings_that_agree_with_their_base_pass(tmp_path):
    # judged merged with the base: tiny has 2 slice intervals (the defaults 6) and 4 harvest volumes
    path = _yaml(tmp_path, yaml.safe_dump({"base": "tiny", "synth": {"slice_interval_weights": [0.5, 0.5],
                                                                     "harvest": 3, "harvest_test": 3}}))
    assert load_preset(path).synth.slice_interval_weights == (0.5, 0.5)
    _yaml(tmp_path, "base: tiny\nharvest:\n  calibration_marks: 0.2\n", "c.yaml")
    based = load_preset(_yaml(tmp_path, "base: c.yaml\nharvest:\n  threshold: combined\n", "d.yaml"))
    assert based.harvest.threshold == "combined"


def test_the_whole_lpg_is_bounded_not_only_each_size(tmp_path, capsys):
    # every size within its range, their product a 4.4-billion-parameter model
    path = _yaml(tmp_path, "base: tiny\nlpg:\n  init_features: 1000\n  growth_rate: 256\n"
                           "  block_config: [64, 64, 64]\n")
    line = _train_with(capsys, tmp_path, path)
    assert f"{path}: lpg: these sizes describe an LPG of 4,440,137,651 parameters, more than the 100,000,000" in line
    from lesion_harvester.lpg.model import parameter_count

    assert parameter_count(MSCNConfig()) < config.MAX_MSCN_PARAMETERS  # the paper's fits
    # the same sizes given with --set are named as such
    line = _train_with(capsys, tmp_path, "tiny", "--set", "lpg.init_features=1000", "--set", "lpg.growth_rate=256",
                       "--set", "lpg.block_config=[64, 64, 64]")
    assert "error: --set: lpg: these sizes describe an LPG of 4,440,137,651 parameters" in line, line


@pytest.mark.parametrize("variant", [{}, {"num_slices": 3}, {"output_stride": 2}])
def test_the_parameter_count_is_that_of_the_model_built(variant):
    import torch

    from lesion_harvester.lpg.model import MSCN, parameter_count

    cfg = dataclasses.replace(load_preset("tiny").lpg, **variant)
    with torch.device("meta"):  # shapes only
        built = sum(p.numel() for p in MSCN(cfg).parameters())
    assert parameter_count(cfg) == built == sum(p.numel() for p in MSCN(cfg).parameters())


def test_a_model_too_large_is_refused_however_it_is_built():
    import torch

    from lesion_harvester.lpg.model import MSCN, parameter_count

    # each size in its range, so the settings themselves build; the model they describe does not
    huge = MSCNConfig(init_features=1000, growth_rate=256, block_config=(64, 64, 64))
    with pytest.raises(config.InvalidSetting, match=r"^lpg: these sizes describe an LPG of 4,477,208,979 param"):
        MSCN(huge)  # refused before the 18 GB of weights are taken
    with torch.device("meta"):  # laid out without memory, it is allowed (that is how it is counted)
        assert sum(p.numel() for p in MSCN(huge).parameters()) == parameter_count(huge) == 4_477_208_979


def test_reading_a_preset_loads_no_torch():
    # the whole LPG's size is counted on the model (torch) only where one is built or a checkpoint read
    import subprocess
    import sys

    code = ("import sys; from lesion_harvester.config import load_preset, PRESETS; "
            "[load_preset(name, ['lpg.init_features=1000']) for name in PRESETS]; print('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


def test_the_presets_settings_are_all_in_range():
    for name in PRESETS:
        preset = load_preset(name)
        for section in config._section_classes():
            assert config.check_settings(getattr(preset, section), at_load=True) is None
    assert typing.get_type_hints(Preset)  # (the sections are dataclasses)


def test_a_nan_score_threshold_is_refused_before_the_checkpoint_is_read(tmp_path, capsys):
    # it kept no proposal and exited 0; here the checkpoint does not even exist: the threshold comes first
    out = tmp_path / "dets.pkl"
    for value in ("nan", "1.5", "-0.2"):
        line = cli_error(capsys, ["propose", tmp_path / "data", "--checkpoint", tmp_path / "none.pt", "--out", out,
                                  "--score-threshold", value])
        assert "stack.score_threshold: expected a " in line and value in line, line
    assert not out.exists()
