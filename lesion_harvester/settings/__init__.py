"""How settings are checked, read and named, for any dataclass of sections.

- :mod:`~lesion_harvester.settings.schema`: the rule a field declares on its type and the one
  checker that reads them; plain data into checked dataclasses and back.
- :mod:`~lesion_harvester.settings.files`: YAML presets, their ``base:`` chains, ``--set`` overrides
  and the resolved configuration a run writes.
- :mod:`~lesion_harvester.settings.fingerprint`: the fingerprints by which a resumed job recognises
  its own earlier work.

The pipeline's own sections are declared in :mod:`lesion_harvester.config`, which binds these to
them and is where callers import settings from.
"""
