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


def test_fingerprint_ignores_defaults_but_not_changes():
    import dataclasses

    from lesion_harvester.config import non_default, settings_fingerprint

    @dataclasses.dataclass
    class Before:
        lr: float = 0.1

    @dataclasses.dataclass
    class After:  # a later version adds a setting whose default keeps the old behaviour
        lr: float = 0.1
        close_up: float = 0.0

    assert settings_fingerprint(Before(lr=0.2), "data") == settings_fingerprint(After(lr=0.2), "data")
    assert settings_fingerprint(After(lr=0.2, close_up=8.0), "data") != settings_fingerprint(Before(lr=0.2), "data")
    preset = load_preset("tiny")
    changed = dataclasses.replace(preset, lpc=dataclasses.replace(preset.lpc, pad_px=8.0))
    assert settings_fingerprint(changed, "data") != settings_fingerprint(preset, "data")
    assert settings_fingerprint(preset, "other") != settings_fingerprint(preset, "data")
    assert non_default(changed)["lpc"]["pad_px"] == 8.0 and "harvest" in non_default(preset)
