import dataclasses
import hashlib
import json
import typing

import pytest
import yaml

from lesion_harvester.config import (
    PRESETS,
    HarvestConfig,
    LPGTrainConfig,
    PreprocessConfig,
    Preset,
    ScanConfig,
    SynthConfig,
    apply_overrides,
    choice_fields,
    dump_config,
    from_dict,
    load_preset,
    non_default,
    settings_fingerprint,
    to_dict,
)
from lesion_harvester.errors import ConfigError


def _write(path, data) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return str(path)


def _load_error(path) -> str:
    with pytest.raises(ConfigError) as err:
        load_preset(str(path))
    message = str(err.value)
    assert "\n" not in message, message
    return message


@pytest.mark.parametrize("name", PRESETS)
def test_presets_load(name):
    preset = load_preset(name)
    assert preset.name == name
    assert preset.synth.total_volumes >= 4


# sha1 of non_default(load_preset(name)) as sorted JSON (the settings a preset sets; a new setting
# whose default keeps the old behaviour leaves it alone), settings_fingerprint(preset, "data") and
# preprocess.fingerprint(), taken before the settings were checked at load (561c424): checking must
# not change a preset, nor the fingerprints by which existing runs resume. A preset changed on
# purpose gets new values here: demo on 2026-12-01 (issue 15: keep_epoch, fusion choice, no variants)
# and 2026-12-02 (issue 16: table3.epochs; a harvest's own fingerprint leaves Table III's settings out)
# and demo and bench on 2026-12-07 (issue 34: the hard-negative vetoes and the LPC's V_H negatives;
# then bench's fusion fixed at the paper's w = 1)
PINNED = {
    "tiny": ("eaaf9f6ab1c18da4cccf83e17e93e54621ecd72d", "d1ea18d603f13a87", "e8ac367c4f"),
    "demo": ("1bee29212b9a67cdec3094ce713d44495b198c32", "c8749f70b8c4d475", "985da73f96"),
    "bench": ("92bba5ab1e078cf9b0819cf63327412c0f303dda", "4a1767135164a10e", "50c455a29c"),
    "paper": ("eb86ce61ffd879f8b7b78815665aa04668048463", "25777102eee8ead6", "906d5966ae"),
}


@pytest.mark.parametrize("name", PRESETS)
def test_resolved_presets_and_fingerprints_are_unchanged(name):
    preset = load_preset(name)
    text = json.dumps(non_default(preset), sort_keys=True, default=str)
    got = (hashlib.sha1(text.encode()).hexdigest(), settings_fingerprint(preset, "data"),
           preset.preprocess.fingerprint())
    assert got == PINNED[name], f"{name} resolves differently now: {text}"


# The fingerprints that run folders and checkpoints record, as computed before the settings moved to
# lesion_harvester/settings (issue 35, item 3): every section of each preset (and of one with settings
# of each kind changed), a harvest's ledger, an LPG training's last.pt and a Table III row. A changed
# one makes every resumed job refuse its folder, so a change here is a deliberate migration.
FINGERPRINTS = {
    "tiny": ("6588518b5396a1f36df15ca753cc93d70f9c18f1", "b9d8a6e9ffcf7568", "e7379fabb84c5f3a", "6149d347912e4524"),
    # 2026-12-07: demo and bench took the hard-negative vetoes and the LPC's V_H negatives: their harvest
    # fingerprints changed (a harvest begun before refuses to resume under the new preset), their LPG
    # training and Table III rows did not; then bench's fixed w = 1 changed its harvest fingerprint again
    "demo": ("a4e7a997516300799902e35a53c9f9a0821b11ce", "52771ed4b044a0a7", "79568ccc31d4ed53", "f2d772426fbb7776"),
    "bench": ("0cda6699e2796d683805b9d3e2af164fb06c4041", "55e17e89698e1883", "dc37a1794a68d3c5", "06ff99ac3b5b9594"),
    "paper": ("cfb70cab5e3e5d291585016cd818007abc11e0d2", "51117bab44297483", "0283eca85cd2cca5", "081b9d4d324c4713"),
    "tiny changed": ("82387d1b3b2c6a160dc5a1c7cd4a9989b26638e0", "1e6b24754fecccc8", "31222e5bff4c7811",
                     "92361213afc28940"),
}
CHANGED = ["lpg_train.soft_negative_above=0.4", "harvest.fusion_exponents=[1.0, 0.5]", "lpc.windows_hu=[[-100, 200]]",
           "lpg.num_slices=3", "preprocess.context_mode=exact", "harvest.rounds=1", "scan.flip_test=true",
           "lpg_train.lr=1e-3"]


@pytest.mark.parametrize("name", sorted(FINGERPRINTS))
def test_the_fingerprints_runs_record_are_unchanged(name):
    from pathlib import Path

    from lesion_harvester.config import fingerprint
    from lesion_harvester.harvest.rounds import harvest_fingerprint
    from lesion_harvester.lpg.model import MSCN
    from lesion_harvester.peers.table3 import row_settings

    preset = apply_overrides(load_preset("tiny"), CHANGED) if name == "tiny changed" else load_preset(name)
    sections = [getattr(preset, f.name) for f in dataclasses.fields(preset) if f.name != "name"]
    data = "/nonexistent/data"
    got = (fingerprint(*sections, digits=40), harvest_fingerprint(preset, Path(data), None, None),
           MSCN.training_fingerprint(preset, data, [None, None]), row_settings(preset, "MSCN", "R+P", 1, "test"))
    assert got == FINGERPRINTS[name]


def test_unknown_key_lists_known_keys(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("synth:\n  image_sise_px: 64\n")
    message = _load_error(path)
    assert "image_sise_px" in message and "image_size_px" in message and str(path) in message


def test_wrong_types_and_missing_preset(tmp_path):
    with pytest.raises(ConfigError, match="expected an integer"):
        from_dict(SynthConfig, {"image_size_px": "big"})
    with pytest.raises(ConfigError, match="expected a list"):
        from_dict(SynthConfig, {"pixel_mm": 0.8})
    with pytest.raises(ConfigError, match="no such preset"):
        load_preset("huge")


@pytest.mark.parametrize("text, kind", [("- 1\n- 2\n", "list"), ("just words\n", "str")])
def test_a_preset_that_is_not_a_mapping_is_refused_naming_the_file(tmp_path, text, kind):
    path = tmp_path / "list.yaml"
    path.write_text(text)
    message = _load_error(path)
    assert message.startswith(f"{path}: expected a mapping") and kind in message


def test_invalid_yaml_is_one_line_naming_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("lpg_train:\n  epochs: [1\n")
    assert _load_error(path).startswith(f"{path}: invalid YAML")


def test_with_total_scales_splits():
    cfg = load_preset("bench").synth.with_total(100)
    assert cfg.total_volumes == 100
    assert min(cfg.fully_annotated, cfg.validation, cfg.detection_test, cfg.harvest_test) >= 1
    assert cfg.harvest_test <= cfg.harvest


@pytest.mark.parametrize("name", PRESETS)
def test_dump_round_trip(tmp_path, name):
    preset = load_preset(name)
    dump_config(preset, tmp_path / "c.yaml")
    assert load_preset(str(tmp_path / "c.yaml")) == preset
    # choices dump as plain values
    dumped = yaml.safe_load((tmp_path / "c.yaml").read_text())
    assert dumped["lpg_train"]["optimizer"] == preset.lpg_train.optimizer and dumped["lpg"]["num_slices"] == 9


def test_fingerprint_ignores_defaults_but_not_changes():
    from lesion_harvester.config import non_default

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


# --- choices -------------------------------------------------------------------------------------


def _literal_fields() -> dict[str, tuple]:
    """Every Literal-typed setting, found from the type hints (so a new choice is tested too)."""
    out = {}
    preset_hints = typing.get_type_hints(Preset)
    for section in dataclasses.fields(Preset):
        cls = preset_hints[section.name]
        if not dataclasses.is_dataclass(cls):
            continue
        for key, hint in typing.get_type_hints(cls).items():
            if typing.get_origin(hint) is typing.Literal:
                out[f"{section.name}.{key}"] = typing.get_args(hint)
    return out


CHOICES = _literal_fields()


def test_the_choice_settings_are_the_expected_ones():
    assert CHOICES == {
        "preprocess.context_mode": ("exact", "shared"),
        "lpg.num_slices": (3, 9),
        "lpg_train.optimizer": ("sgd", "adamw"),
        "lpg_train.lr_schedule": ("step", "cosine"),
        "lpg_train.background_volumes": ("all", "fully_annotated"),
        "lpg_train.keep_epoch": ("validation", "last"),
        "lpc.variant": ("multiview", "axial", "3d"),
        "lpc.negatives": ("uniform", "matched"),
        "lpc.pretrain": ("none", "lpg_scores"),
        "harvest.threshold": ("vm", "marks", "combined", "fp_rate", "vm_and_fp_rate"),
        "harvest.fusion_choice": ("admitted", "ap"),
        "lpg.output_stride": (4, 2),
        "retinanet.resnet_depth": (10, 18, 34),
        "lpg_train.amp_dtype": ("float16", "bfloat16"),
        "scan.amp_dtype": ("float16", "bfloat16"),
    }
    assert choice_fields() == CHOICES


def _misspelt(allowed):
    if isinstance(allowed[0], str):
        word = allowed[0]
        return word[1] + word[0] + word[2:]  # "sgd" -> "gsd"
    return max(allowed) + 2  # a number that is not a choice


@pytest.mark.parametrize("setting", sorted(CHOICES))
def test_a_misspelt_choice_fails_at_load_naming_the_key_and_the_choices(tmp_path, setting):
    section, key = setting.split(".")
    allowed = CHOICES[setting]
    bad = _misspelt(allowed)
    assert bad not in allowed
    path = _write(tmp_path / "typo.yaml", {"base": "demo", section: {key: bad}})
    message = _load_error(path)
    assert message == f"{path}: {setting}: {bad!r} is not one of {', '.join(repr(a) for a in allowed)}"
    # built in code, the same check
    cls = typing.get_type_hints(Preset)[section]
    with pytest.raises(ConfigError, match=f"^{setting}: .* is not one of"):
        cls(**{key: bad})
    with pytest.raises(ConfigError, match=f"^{setting}: "):
        dataclasses.replace(getattr(load_preset("demo"), section), **{key: bad})
    # and every allowed value passes (the threshold rules that rest on held-out marks need some)
    needs = ["harvest.calibration_marks=0.2"] if setting == "harvest.threshold" else []
    for value in allowed:
        preset = apply_overrides(load_preset("demo"), [*needs, f"{setting}={value}"])
        assert getattr(preset, section).__dict__[key] == value


def test_error_text_of_a_misspelt_optimizer_in_a_built_in_preset(monkeypatch):
    from importlib import resources

    real = resources.files

    class Patched:
        def __init__(self, root):
            self.root = root

        def joinpath(self, name):
            inner = self.root.joinpath(name)

            class Text:
                def read_text(self):
                    return inner.read_text().replace("optimizer: adamw", "optimizer: sdg")

            return Text()

    monkeypatch.setattr(resources, "files", lambda pkg: Patched(real(pkg)))
    with pytest.raises(ConfigError) as err:
        load_preset("demo")
    assert str(err.value) == "preset 'demo': lpg_train.optimizer: 'sdg' is not one of 'sgd', 'adamw'"


def test_a_choice_of_the_wrong_type_is_refused(tmp_path):
    assert "'9' is not one of 3, 9" in _load_error(_write(tmp_path / "p.yaml", {"lpg": {"num_slices": "9"}}))
    assert "9.0 is not one of 3, 9" in _load_error(_write(tmp_path / "p.yaml", {"lpg": {"num_slices": 9.0}}))
    assert "true is not one of 'sgd'" in _load_error(_write(tmp_path / "p.yaml", {"lpg_train": {"optimizer": True}}))


# --- ranges --------------------------------------------------------------------------------------

BAD_RANGES = [
    ("lpg_train.batch_size", 0),
    ("lpc.batch_size", -1),
    ("scan.batch_slices", 0),
    ("lpg_train.epochs", 0),
    ("lpc.epochs", 0),
    ("lpg_train.iters_per_epoch", 0),
    ("lpg_train.lr", 0.0),
    ("lpg_train.lr", -0.1),
    ("lpc.lr", 0),
    ("lpg_train.lr", float("nan")),
    ("lpg_train.lr", float("inf")),
    ("lpg_train.momentum", float("nan")),  # any float setting: no NaN or infinity
    ("stack.link_iou", float("-inf")),
    ("preprocess.window_hu", [0.0, float("nan")]),
    ("lpg_train.soft_negative_above", 0.0),
    ("lpg_train.soft_negative_above", 1.0),
    ("lpg_train.soft_negative_above", -0.2),
    ("harvest.fusion_exponents", []),
    ("harvest.fusion_exponents", [1.0, -1.0]),
    ("harvest.precision", 0.0),
    ("harvest.precision", 1.01),
    ("lpc.folds", 0),
    ("harvest.rounds", 0),
    ("harvest.finetune_epochs", 0),
    ("harvest.finetune_iters_per_epoch", 0),
    ("harvest.finetune_lr_factor", 0.0),
    ("preprocess.spacing_mm", 0.0),
    ("preprocess.spacing_mm", -1.0),
    ("preprocess.window_hu", [240.0, -160.0]),
    ("preprocess.window_hu", [0.0, 0.0]),
    ("preprocess.window_hu", [-160.0, 0.0, 240.0]),
    ("lpc.windows_hu", []),
    ("lpc.windows_hu", [[-160.0, 240.0], [275.0, -175.0]]),
    ("synth.pixel_mm", [0.8]),
]


@pytest.mark.parametrize("setting, value", BAD_RANGES)
def test_a_setting_out_of_range_fails_at_load_naming_the_key(tmp_path, setting, value):
    section, key = setting.split(".")
    path = _write(tmp_path / "p.yaml", {section: {key: value}})
    message = _load_error(path)
    assert message.startswith(f"{path}: {setting}: expected "), message
    # the same through --set
    with pytest.raises(ConfigError, match=f"^--set: {setting}: expected "):
        apply_overrides(load_preset("tiny"), [f"{setting}={json.dumps(value).replace('NaN', '.nan')}"
                                             .replace("-Infinity", "-.inf").replace("Infinity", ".inf")])


@pytest.mark.parametrize("setting, value", [("lpg_train.soft_negative_above", None),
                                            ("lpg_train.soft_negative_above", 0.5), ("harvest.precision", 1.0),
                                            ("harvest.fusion_exponents", [0.0]), ("lpc.folds", 1),
                                            ("harvest.rounds", 1), ("preprocess.window_hu", [-1, 1])])
def test_values_at_the_edge_of_a_range_pass(tmp_path, setting, value):
    section, key = setting.split(".")
    preset = load_preset(_write(tmp_path / "p.yaml", {"base": "tiny", section: {key: value}}))
    assert to_dict(getattr(preset, section))[key] == value


def test_fusion_exponents_message_names_the_setting():
    preset = load_preset("tiny")
    with pytest.raises(ConfigError, match=r"^harvest\.fusion_exponents: expected one or more exponents >= 0"):
        dataclasses.replace(preset.harvest, fusion_exponents=())
    with pytest.raises(ConfigError, match="harvest.fusion_exponents"):
        HarvestConfig(fusion_exponents=(1.0, -1.0))


def test_settings_built_in_code_are_checked_too():
    with pytest.raises(ConfigError, match=r"^lpg_train\.soft_negative_above: expected a score between 0 and 1"):
        LPGTrainConfig(soft_negative_above=1.0)
    with pytest.raises(ConfigError, match=r"^lpg_train\.epochs: expected an integer >= 1, got 0$"):
        dataclasses.replace(LPGTrainConfig(), epochs=0)
    with pytest.raises(ConfigError, match=r"^preprocess\.window_hu: expected \[low, high\]"):
        PreprocessConfig(window_hu=(240.0, -160.0))
    with pytest.raises(ConfigError, match=r"^scan\.batch_slices: expected an integer >= 1, got 0$"):
        ScanConfig(batch_slices=0)
    # the placeholder that harvest/rounds.py builds when fingerprinting a harvest's settings
    assert HarvestConfig(rounds=0).rounds == 0
    with pytest.raises(ConfigError, match="harvest.rounds"):
        from_dict(HarvestConfig, {"rounds": 0}, "x.yaml", "harvest")


def test_checkpoint_style_from_dict_names_the_source():
    with pytest.raises(ConfigError) as err:
        from_dict(LPGTrainConfig, {"optimizer": "sdg"}, "run/last.pt config")
    assert str(err.value) == "run/last.pt config: optimizer: 'sdg' is not one of 'sgd', 'adamw'"


def test_a_rule_declared_on_a_field_is_checked_however_the_dataclass_is_built():
    from typing import Annotated

    from lesion_harvester.settings.schema import at_least, check_settings, when_read

    @dataclasses.dataclass(frozen=True)
    class Section:
        epochs: Annotated[int, at_least(1)] = 2
        rounds: Annotated[int, when_read(at_least(1))] = 0  # checked only when read

    assert check_settings(Section()) is None
    assert check_settings(Section(epochs=0)) == ("epochs", "expected an integer >= 1, got 0")
    assert check_settings(Section(), at_load=True) == ("rounds", "expected an integer >= 1, got 0")
    with pytest.raises(ConfigError, match=r"^x\.yaml: s\.epochs: expected an integer >= 1, got 0$"):
        from_dict(Section, {"epochs": 0, "rounds": 1}, "x.yaml", "s")
    assert from_dict(Section, {"rounds": 1}) == Section(rounds=1)


# --- base: ---------------------------------------------------------------------------------------


def test_base_built_in_preset_changes_one_nested_value(tmp_path):
    path = _write(tmp_path / "longer.yaml", "base: bench\nlpg_train:\n  iters_per_epoch: 600\n")
    preset = load_preset(path)
    bench = load_preset("bench")
    assert preset.name == "longer"
    assert preset == dataclasses.replace(bench, name="longer",
                                         lpg_train=dataclasses.replace(bench.lpg_train, iters_per_epoch=600))


def test_base_relative_path_is_relative_to_the_file(tmp_path, monkeypatch):
    _write(tmp_path / "presets" / "parent.yaml", {"base": "tiny", "lpc": {"epochs": 5}})
    child = _write(tmp_path / "presets" / "sub" / "child.yaml", {"base": "../parent.yaml", "lpc": {"folds": 3}})
    monkeypatch.chdir(tmp_path)  # neither file's folder
    preset = load_preset(child)
    tiny = load_preset("tiny")
    assert preset.lpc == dataclasses.replace(tiny.lpc, epochs=5, folds=3)
    assert preset.name == "child" and preset.synth == tiny.synth


def test_base_chain_merges_key_by_key_and_lists_replace(tmp_path):
    _write(tmp_path / "a.yaml", {"base": "bench", "name": "a", "harvest": {"rounds": 5},
                                 "lpg_train": {"epochs": 3, "scale_jitter": [0.9, 1.1]}})
    _write(tmp_path / "b.yaml", {"base": str(tmp_path / "a.yaml"), "harvest": {"fusion_exponents": [1.0]}})
    c = _write(tmp_path / "c.yaml", {"base": "b.yaml", "lpg_train": {"epochs": 4}, "lpc": None})
    preset = load_preset(c)
    bench = load_preset("bench")
    assert preset.name == "c"  # the file's own name, not a base's (a.yaml names itself "a")
    assert preset.harvest == dataclasses.replace(bench.harvest, rounds=5, fusion_exponents=(1.0,))
    assert preset.lpg_train == dataclasses.replace(bench.lpg_train, epochs=4, scale_jitter=(0.9, 1.1))
    assert preset.lpc == bench.lpc  # an empty section changes nothing
    assert preset.preprocess == bench.preprocess and preset.stack == bench.stack


def test_base_cycle_is_a_config_error_naming_the_files(tmp_path):
    a = _write(tmp_path / "a.yaml", {"base": "b.yaml"})
    _write(tmp_path / "b.yaml", {"base": "a.yaml", "lpc": {"epochs": 2}})
    message = _load_error(a)
    assert message.startswith(f"{a}: base:") and "a.yaml -> " in message and "b.yaml -> " in message
    itself = _write(tmp_path / "self.yaml", {"base": "self.yaml"})
    assert "self.yaml -> " in _load_error(itself)


def test_base_errors_name_the_file_they_are_in(tmp_path):
    _write(tmp_path / "parent.yaml", {"lpg_train": {"optimizer": "sdg"}})
    child = _write(tmp_path / "child.yaml", {"base": "parent.yaml", "lpc": {"epochs": 2}})
    assert _load_error(child).startswith(f"{tmp_path / 'parent.yaml'}: lpg_train.optimizer: 'sdg'")
    missing = _write(tmp_path / "orphan.yaml", {"base": "nowhere.yaml"})
    message = _load_error(missing)
    assert message.startswith(f"{missing}: base: nowhere.yaml: no such preset or file")
    assert str(tmp_path / "nowhere.yaml") in message
    assert "expected a preset" in _load_error(_write(tmp_path / "odd.yaml", {"base": ["bench"]}))


def test_dump_of_a_based_preset_has_no_base_and_loads_back(tmp_path):
    path = _write(tmp_path / "mine.yaml", {"base": "demo", "lpg_train": {"epochs": 2}})
    preset = load_preset(path)
    dump_config(preset, tmp_path / "resolved.yaml")
    dumped = yaml.safe_load((tmp_path / "resolved.yaml").read_text())
    assert "base" not in dumped and dumped["name"] == "mine"
    assert load_preset(str(tmp_path / "resolved.yaml")) == preset
    # a resolved config can itself be a base: its name does not carry over
    again = load_preset(_write(tmp_path / "again.yaml", {"base": "resolved.yaml"}))
    assert again == dataclasses.replace(preset, name="again")


# --- overrides -----------------------------------------------------------------------------------


def test_overrides_parse_values_as_yaml():
    demo = load_preset("demo")
    preset = apply_overrides(demo, ["lpg_train.iters_per_epoch=600", "harvest.fusion_exponents=[1.0, 0.5]",
                                    "lpg_train.hflip=false", "lpg_train.soft_negative_above=0.4",
                                    "lpg.pretrained_path=null", "lpg_train.lr=0.002", "lpc.pad_px=32",
                                    "lpg_train.optimizer=sgd", "lpg_train.lr=2e-3"])
    assert preset.lpg_train == dataclasses.replace(demo.lpg_train, iters_per_epoch=600, hflip=False,
                                                   soft_negative_above=0.4, optimizer="sgd", lr=0.002)
    assert preset.harvest.fusion_exponents == (1.0, 0.5)
    assert preset.lpc.pad_px == 32.0 and isinstance(preset.lpc.pad_px, float)
    assert preset.lpg.pretrained_path is None and preset.name == "demo"
    assert apply_overrides(preset, ["lpg_train.soft_negative_above=null"]).lpg_train.soft_negative_above is None
    assert apply_overrides(demo, []) == demo


def test_load_preset_applies_overrides_after_base(tmp_path):
    path = _write(tmp_path / "p.yaml", {"base": "bench", "lpg_train": {"epochs": 3}})
    preset = load_preset(path, overrides=["lpg_train.epochs=5", "scan.batch_slices=2"])
    assert preset.lpg_train.epochs == 5 and preset.scan.batch_slices == 2 and preset.name == "p"
    assert load_preset("tiny", ["harvest.rounds=1"]).harvest.rounds == 1


@pytest.mark.parametrize("override, expected", [
    ("lpg_trian.epochs=3", "--set lpg_trian.epochs=3: unknown section 'lpg_trian'; known sections: synth, "
                           "preprocess, lpg, lpg_train, scan, stack, lpc, retinanet, harvest"),
    ("lpg_train.epoch=3", "--set lpg_train.epoch=3: unknown key 'epoch' in lpg_train; known keys: crop_px, "),
    ("lpg_train.epochs", "--set lpg_train.epochs: expected section.key=value, e.g. "
                         "--set lpg_train.iters_per_epoch=600"),
    ("epochs=3", "--set epochs=3: expected section.key=value"),
    ("lpg_train.epochs=three", "--set: lpg_train.epochs: expected an integer, got 'three'"),
    ("lpg_train.epochs=3.5", "--set: lpg_train.epochs: expected an integer, got 3.5"),
    ("lpg_train.hflip=1", "--set: lpg_train.hflip: expected true or false, got 1"),
    ("harvest.fusion_exponents=1.0", "--set: harvest.fusion_exponents: expected a list, got 1.0"),
    ("lpg_train.optimizer=adam", "--set: lpg_train.optimizer: 'adam' is not one of 'sgd', 'adamw'"),
    ("lpc.variant=3D", "--set: lpc.variant: '3D' is not one of 'multiview', 'axial', '3d'"),
    ("lpg_train.epochs=0", "--set: lpg_train.epochs: expected an integer >= 1, got 0"),
    ("lpg_train.scale_jitter=[0.8, 1.2", "--set lpg_train.scale_jitter=[0.8, 1.2: invalid YAML value"),
])
def test_bad_overrides_are_one_line_errors(override, expected):
    with pytest.raises(ConfigError) as err:
        apply_overrides(load_preset("demo"), [override])
    message = str(err.value)
    assert message.startswith(expected) and "\n" not in message, message


def test_exponent_numbers_without_a_dot_are_numbers(tmp_path):
    # PyYAML reads 1e-4 as text; a float setting takes it as the number it means, in a file and in --set
    text = "base: tiny\nlpg_train:\n  lr: 1e-4\nharvest:\n  fusion_exponents: [1e0]\n"
    preset = load_preset(_write(tmp_path / "p.yaml", text))
    assert preset.lpg_train.lr == 1e-4 and preset.harvest.fusion_exponents == (1.0,)
    assert apply_overrides(preset, ["lpc.lr=5E-5"]).lpc.lr == 5e-5
    with pytest.raises(ConfigError, match="lpg_train.epochs: expected an integer, got '1e1'"):
        apply_overrides(preset, ["lpg_train.epochs=1e1"])


def test_invalid_setting_errors_pickle():
    import pickle

    with pytest.raises(ConfigError) as err:
        LPGTrainConfig(optimizer="sdg")
    again = pickle.loads(pickle.dumps(err.value))
    assert type(again) is type(err.value) and str(again) == str(err.value) and again.key == "optimizer"


def test_a_threshold_from_marks_needs_calibration_marks():
    with pytest.raises(ConfigError, match=r"^harvest\.threshold: 'combined' estimates .*calibration_marks above 0"):
        HarvestConfig(threshold="combined")
    assert HarvestConfig(threshold="combined", calibration_marks=0.2).calibration_marks == 0.2
    with pytest.raises(ConfigError, match=r"harvest\.calibration_marks: expected a share of V_H in \[0, 0.5\]"):
        HarvestConfig(calibration_marks=0.9)
