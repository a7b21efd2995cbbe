import pytest

from lesion_harvester.config import PRESETS, SynthConfig, dump_config, from_dict, load_preset
from lesion_harvester.errors import ConfigError


@pytest.mark.parametrize("name", PRESETS)
def test_presets_load(name):
    preset = load_preset(name)
    assert preset.name == name
    assert preset.synth.total_volumes >= 4


def test_unknown_key_lists_known_keys(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("synth:\n  image_sise_px: 64\n")
    with pytest.raises(ConfigError) as err:
        load_preset(str(path))
    assert "image_sise_px" in str(err.value) and "image_size_px" in str(err.value)


def test_wrong_types_and_missing_preset(tmp_path):
    with pytest.raises(ConfigError, match="expected an integer"):
        from_dict(SynthConfig, {"image_size_px": "big"})
    with pytest.raises(ConfigError, match="expected a list"):
        from_dict(SynthConfig, {"pixel_mm": 0.8})
    with pytest.raises(ConfigError, match="no such preset"):
        load_preset("huge")


def test_with_total_scales_splits():
    cfg = load_preset("bench").synth.with_total(100)
    assert cfg.total_volumes == 100
    assert min(cfg.fully_annotated, cfg.validation, cfg.detection_test, cfg.harvest_test) >= 1
    assert cfg.harvest_test <= cfg.harvest


def test_dump_round_trip(tmp_path):
    preset = load_preset("demo")
    dump_config(preset, tmp_path / "c.yaml")
    assert load_preset(str(tmp_path / "c.yaml")) == preset
