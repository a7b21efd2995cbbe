"""Presets as YAML files: ``base:`` chains merged key by key, ``--set`` overrides, the resolved
configuration a run writes.

Generic over the root dataclass (one field per section, :func:`~lesion_harvester.settings.schema.sections`);
:mod:`lesion_harvester.config` binds it to the pipeline's ``Preset`` and built-in presets.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TypeVar

import yaml

from lesion_harvester.errors import ConfigError
from lesion_harvester.settings.schema import from_dict, sections, show, to_dict

T = TypeVar("T")


@dataclass(frozen=True)
class PresetFiles:
    """Where the presets of ``root`` come from: built-in ``names`` (``NAME.yaml`` in ``package``) or
    YAML paths. ``defaults`` is the built-in preset whose settings are the dataclasses' defaults."""

    root: type
    names: tuple[str, ...]
    package: str
    defaults: str

    def load(self, name_or_path: str | Path, overrides: Iterable[str] = ()):
        """A built-in preset by name, or a YAML file by path, then ``overrides`` applied
        (``section.key=value`` each, see :func:`apply_overrides`).

        A YAML file may start from another preset: ``base: bench`` (a built-in name) or ``base: ../x.yaml``
        (a path, relative to the file's folder); its own sections then change the base's settings key by
        key (lists replace), a base may have a base, and the result is named after the file itself. A
        file without a base gives every setting: one that leaves a setting out, or an empty file, is an
        error, since it would silently mean the defaults.
        """
        data, where = self.read(str(name_or_path))
        return apply_overrides(from_dict(self.root, data, where), overrides)

    def read(self, name_or_path: str) -> tuple[dict, str]:
        """The settings of a preset with its ``base:`` chain merged in, and where it is (for errors)."""
        identities: list[str] = []
        wheres: list[str] = []
        layers: list[dict] = []
        ref, folder, referrer = name_or_path, None, None
        while True:
            identity, where, data, home = self._layer(ref, folder, referrer)
            if identity in identities:
                cycle = " -> ".join([*wheres[identities.index(identity):], where])
                raise ConfigError(f"{wheres[0]}: base: the presets name each other as base ({cycle})")
            identities.append(identity)
            wheres.append(where)
            base = data.pop("base", None)
            data.setdefault("name", Path(ref).stem)  # the result's name is the first file's
            layers.append(data)
            if base is None:
                break
            if not isinstance(base, str) or not base.strip():
                raise ConfigError(f"{where}: base: expected a preset ({', '.join(self.names)}) or the path of a "
                                  f"YAML file, got {show(base)}")
            ref, folder, referrer = base.strip(), home, where
        merged: dict = {}
        for layer, where in zip(reversed(layers), reversed(wheres)):
            merged = merge(merged, layer)
            # checked as merged so far, from the base up, so that an error names the file that brings it in;
            # settings that must agree (synth.harvest_test <= synth.harvest) are judged with their base's values
            from_dict(self.root, merged, where)
        self._check_complete(layers[-1], wheres[-1], ref)
        return merged, wheres[0]

    def _layer(self, ref: str, folder: Path | None, referrer: str | None) -> tuple[str, str, dict, Path | None]:
        """(identity, where, data, folder) of the preset ``ref``: a built-in name or a YAML path, relative
        to ``folder`` (that of the file naming it as its base) unless absolute."""
        if ref in self.names:
            where = f"preset '{ref}'"
            identity, home = where, None
            text = resources.files(self.package).joinpath(f"{ref}.yaml").read_text()
        else:
            path = Path(ref)
            if folder is not None and not path.is_absolute():
                path = folder / path
            if not path.is_file():
                looked = f" ({path})" if str(path) != ref else ""
                raise ConfigError(f"{referrer + ': base: ' if referrer else ''}{ref}: no such preset or file{looked}; "
                                  f"presets are {', '.join(self.names)}")
            where, identity, home = str(path), str(path.resolve()), path.parent
            text = path.read_text()
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{where}: invalid YAML ({_one_line(exc)})") from None
        if data is None or data == {}:
            if ref in self.names:
                data = {}
            else:  # it would silently mean the defaults, the paper's full-size settings
                raise ConfigError(f"{where}: empty preset; {self._start_from}")
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: expected a mapping of sections ({', '.join(sections(self.root))}), "
                              f"got a {type(data).__name__}")
        return identity, where, data, home

    def _check_complete(self, data: dict, where: str, ref: str) -> None:
        """A YAML preset without a base must give every setting: a missing section or key would silently
        take the default (the paper's full size: 8 epochs of 2,000 iterations at 512 px). Built-in
        presets start from the defaults on purpose."""
        if ref in self.names:
            return
        missing = []
        for section, cls in sections(self.root).items():
            given = data.get(section) or {}
            missing += [f"{section}.{f.name}" for f in dataclasses.fields(cls) if f.name not in given]
        if missing:
            shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
            raise ConfigError(f"{where}: names no base and leaves {shown} unset; {self._start_from}")

    @property
    def _start_from(self) -> str:
        return (f"start it with the preset it changes (base: {' | '.join(self.names)}; {self.defaults}'s settings "
                "are the defaults) and give only the settings to change, or give every setting (as a run's "
                "config.yaml does)")


def merge(base: dict, own: dict) -> dict:
    """``own`` over ``base``, mapping by mapping (lists and other values replace; an empty section
    changes nothing)."""
    out = dict(base)
    for k, v in own.items():
        if isinstance(out.get(k), dict) and isinstance(v, dict):
            out[k] = merge(out[k], v)
        elif not (isinstance(out.get(k), dict) and v is None):
            out[k] = v
    return out


def apply_overrides(preset: T, overrides: Iterable[str]) -> T:
    """``preset`` with single settings changed, each given as ``section.key=value``.

    On the command line::

        lesion-harvester harvest DATA --out RUN --preset bench \\
            --set lpg_train.iters_per_epoch=600 --set harvest.fusion_exponents=[1.0,0.5] \\
            --set lpg_train.soft_negative_above=null --set lpg_train.hflip=false

    The value is read as YAML (``600``, ``0.002``, ``[1.0, 0.5]``, ``true``, ``null``, ``adamw``) and
    checked exactly as in a preset file: an unknown section or key, a wrong type, a choice not among
    its values or a number out of range is a one-line :class:`ConfigError`. Later overrides win.
    """
    if isinstance(overrides, str):
        overrides = [overrides]
    known_sections = sections(type(preset))
    for text in overrides:
        target, eq, raw = text.partition("=")
        section, dot, key = target.strip().partition(".")
        if not eq or not dot or not section or not key:
            raise ConfigError(f"--set {text}: expected section.key=value, e.g. --set lpg_train.iters_per_epoch=600")
        if section not in known_sections:
            raise ConfigError(f"--set {text}: unknown section '{section}'; known sections: "
                              f"{', '.join(known_sections)}")
        cls = known_sections[section]
        known = [f.name for f in dataclasses.fields(cls)]
        if key not in known:
            raise ConfigError(f"--set {text}: unknown key '{key}' in {section}; known keys: {', '.join(known)}")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {text}: invalid YAML value ({_one_line(exc)})") from None
        current = getattr(preset, section)
        data = to_dict(current) if current is not None else {}
        data[key] = value
        preset = dataclasses.replace(preset, **{section: from_dict(cls, data, "--set", section)})
    return preset


def dump_config(obj, path: str | Path) -> None:
    """Write the resolved configuration as YAML, atomically."""
    from lesion_harvester.storage.atomic import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(to_dict(obj), sort_keys=False))


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())
