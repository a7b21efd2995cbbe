"""Configuration: YAML presets read into frozen dataclasses, one section per pipeline stage.

A preset is ``tiny`` (tests), ``demo`` (the quick CPU path), ``bench`` (the CPU accuracy claims)
or ``paper`` (the paper's GPU configuration), or the path of a YAML file. Unknown keys are
rejected with the list of known ones, so a typo never passes silently. Every run writes the
resolved configuration next to its outputs (:func:`dump_config`).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from lesion_harvester.errors import ConfigError

PRESETS = ("tiny", "demo", "bench", "paper")


@dataclass(frozen=True)
class SynthConfig:
    """Synthetic CT benchmark (``lesion-harvester synth``).

    Lesion statistics (size, count, marked fraction) are fixed in ``synth/lesions.py`` and
    ``synth/dataset.py``; a preset changes only resolution, volume counts and slice intervals.
    """

    image_size_px: int = 512
    pixel_mm: tuple[float, float] = (0.65, 0.95)
    slice_intervals_mm: tuple[float, ...] = (1.0, 1.25, 2.0, 2.5, 3.0, 5.0)
    slice_interval_weights: tuple[float, ...] = (0.12, 0.08, 0.2, 0.15, 0.1, 0.35)
    half_extent_mm: tuple[float, float] = (30.0, 45.0)
    max_lesions: int = 30
    noise_hu: tuple[float, float] = (10.0, 22.0)
    # volume counts per split; harvest_test is a subset of harvest
    fully_annotated: int = 10
    harvest: int = 190
    harvest_test: int = 40
    validation: int = 12
    detection_test: int = 45
    workers: int = 2
    png_compress_level: int = 1

    @property
    def total_volumes(self) -> int:
        return self.fully_annotated + self.harvest + self.validation + self.detection_test

    def with_total(self, total: int) -> SynthConfig:
        """Scale the split counts to ``total`` volumes (each split keeps at least one)."""
        if total < 4:
            raise ConfigError(f"--volumes must be at least 4 (one per split), got {total}")
        current = self.total_volumes
        fa = max(1, round(self.fully_annotated * total / current))
        val = max(1, round(self.validation * total / current))
        test = max(1, round(self.detection_test * total / current))
        harvest = max(1, total - fa - val - test)
        while fa + val + test + harvest > total:
            largest = max(("fa", fa), ("val", val), ("test", test), key=lambda kv: kv[1])[0]
            fa, val, test = (fa - (largest == "fa"), val - (largest == "val"), test - (largest == "test"))
        ht = max(1, min(harvest, round(self.harvest_test * harvest / max(self.harvest, 1))))
        return dataclasses.replace(
            self, fully_annotated=fa, harvest=harvest, harvest_test=ht, validation=val, detection_test=test
        )


@dataclass(frozen=True)
class Preset:
    """A whole configuration: one dataclass per stage."""

    name: str = "custom"
    synth: SynthConfig = field(default_factory=SynthConfig)


def _convert(value, annotation, where: str):
    origin = typing.get_origin(annotation)
    if dataclasses.is_dataclass(annotation):
        return from_dict(annotation, value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(annotation)
        item_type = args[0] if args else float
        return tuple(_convert(v, item_type, where) for v in value)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None:
            return None
        return _convert(value, options[0], where)
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls, data: dict | None, where: str = "config"):
    """Build dataclass ``cls`` from a dict, rejecting unknown keys and wrong types."""
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known keys: {sorted(known)}")
    kwargs = {k: _convert(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    return cls(**kwargs)


def load_preset(name_or_path: str) -> Preset:
    """Load a built-in preset by name, or a YAML file by path."""
    if name_or_path in PRESETS:
        text = resources.files("lesion_harvester.configs").joinpath(f"{name_or_path}.yaml").read_text()
        where = f"preset '{name_or_path}'"
    else:
        path = Path(name_or_path)
        if not path.is_file():
            raise ConfigError(f"{name_or_path}: no such preset or file; presets are {', '.join(PRESETS)}")
        text, where = path.read_text(), str(path)
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: invalid YAML ({exc})") from None
    data.setdefault("name", Path(name_or_path).stem)
    return from_dict(Preset, data, where)


def to_dict(obj) -> dict:
    """A dataclass as plain YAML-ready data (tuples as lists)."""

    def plain(v):
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    return plain(obj)


def dump_config(obj, path: str | Path) -> None:
    """Write the resolved configuration as YAML, atomically."""
    from lesion_harvester.io.atomic import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(to_dict(obj), sort_keys=False))
