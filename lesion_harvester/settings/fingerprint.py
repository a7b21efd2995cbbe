"""Run fingerprints: hex digits naming settings and inputs, by which a resumable job recognises its
own earlier work (a harvest's ledger, an LPG's ``last.pt``, a scan's partial folder) and the
prepared-volume cache its folder.

Run folders and checkpoints record these, so the digits for the same settings must never change:
tests/test_config.py pins those of the presets.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json


def non_default(obj) -> dict:
    """The settings of a dataclass that differ from their defaults (nested dataclasses likewise).

    Run fingerprints are taken over these, so that a setting added in a later version, whose
    default keeps the old behaviour, does not stop a run started before from resuming.
    """
    out = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            nested = non_default(value)
            if nested:
                out[f.name] = nested
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if value != default:
            out[f.name] = value
    return out


def fingerprint(*parts, digits: int = 16) -> str:
    """Hex digits naming ``parts``: JSON-able values, settings dataclasses by their non-default settings."""
    plain = [non_default(p) if dataclasses.is_dataclass(p) else p for p in parts]
    return hashlib.sha1(json.dumps(plain, default=str, sort_keys=True).encode()).hexdigest()[:digits]


def settings_fingerprint(preset, *extra) -> str:
    """16 hex digits naming a preset's (or any settings dataclass's) non-default settings plus ``extra``."""
    return fingerprint(preset, *extra)
