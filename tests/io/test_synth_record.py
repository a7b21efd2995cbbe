import json

import pytest

from lesion_harvester.config import SynthConfig, from_dict, load_preset
from lesion_harvester.errors import DataError
from lesion_harvester.io.synth_record import read_generator_record


def test_reads_the_settings_and_seed_a_synthetic_dataset_was_made_with(tiny_dataset):
    settings, seed, path = read_generator_record(tiny_dataset)
    assert from_dict(SynthConfig, settings, str(path)) == load_preset("tiny").synth
    assert seed == json.loads((tiny_dataset / "stats.json").read_text())["seed"]


@pytest.mark.parametrize("config, stats, named, problem", [
    (None, '{"seed": 1}', "synth_config.yaml", "missing"),
    ("image_size_px: 64\n", None, "stats.json", "missing"),
    ("image_size_px: [64\n", '{"seed": 1}', "synth_config.yaml", "invalid YAML"),
    ("- 64\n", '{"seed": 1}', "synth_config.yaml", "mapping"),
    ("image_size_px: 64\n", '{"seed": "1"}', "stats.json", "integer 'seed'"),
    ("image_size_px: 64\n", '[1]', "stats.json", "JSON object"),
])
def test_a_missing_or_broken_record_names_its_file(tmp_path, config, stats, named, problem):
    if config is not None:
        (tmp_path / "synth_config.yaml").write_text(config)
    if stats is not None:
        (tmp_path / "stats.json").write_text(stats)
    with pytest.raises(DataError, match=problem) as error:
        read_generator_record(tmp_path)
    assert error.value.path == str(tmp_path / named)
