"""What a synthetic dataset was generated with: ``synth_config.yaml`` and the seed in ``stats.json``
(both written by :func:`lesion_harvester.synth.dataset.write_synthetic_dataset`)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from lesion_harvester.errors import DataError


def read_generator_record(root: str | Path) -> tuple[dict, int, Path]:
    """(the generator settings as a dict, the seed, the settings file) of the synthetic dataset ``root``;
    DataError naming the file where one is missing or unreadable."""
    config_path, stats_path = Path(root) / "synth_config.yaml", Path(root) / "stats.json"
    for path in (config_path, stats_path):
        if not path.is_file():
            raise DataError(path, "missing", "only a dataset made by 'lesion-harvester synth' has it")
    try:
        settings = yaml.safe_load(config_path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise DataError(config_path, f"invalid YAML ({exc})".replace("\n", " ")) from None
    try:
        seed = json.loads(stats_path.read_text()).get("seed")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as exc:
        raise DataError(stats_path, f"not a JSON object ({exc})") from None
    if not isinstance(settings, dict):
        raise DataError(config_path, "expected a mapping of generator settings")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise DataError(stats_path, f"no integer 'seed' (got {seed!r})")
    return settings, seed, config_path
