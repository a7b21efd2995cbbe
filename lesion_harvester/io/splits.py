"""Named volume splits: ``splits.json`` of the synthetic layout, or DL_info's official split."""

from __future__ import annotations

import json
from pathlib import Path

from lesion_harvester.errors import DataError

SPLIT_KEYS = ("fully_annotated", "harvest", "harvest_test", "validation", "detection_test")


def read_splits(root: str | Path) -> dict[str, list[str]] | None:
    """``ROOT/splits.json`` as {name: [keys]}, or None if there is none."""
    path = Path(root) / "splits.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(path, f"not valid JSON ({exc})") from None
    if not isinstance(data, dict) or not all(
        isinstance(v, list) and all(isinstance(k, str) for k in v) for v in data.values()
    ):
        raise DataError(path, "expected {split name: [volume keys]}")
    return data


def check_split_keys(path: Path, splits: dict[str, list[str]], dataset) -> None:
    """DataError naming ``path`` (splits.json) if a split names a volume that DL_info.csv lacks."""
    for name, keys in splits.items():
        unknown = [k for k in keys if k not in dataset.sub_volumes]
        if unknown:
            raise DataError(path, f"split '{name}' names {len(unknown)} volumes not in {dataset.dl_info_path}, "
                                  f"e.g. {unknown[0]}")


def resolve_split(root: Path, dataset, split: str | None) -> list[str]:
    """Keys of ``split`` in a DeepLesion-layout dataset (all keys when split is None)."""
    if split is None:
        return dataset.keys()
    splits = read_splits(root)
    if splits is not None and split in splits:
        unknown = [k for k in splits[split] if k not in dataset.sub_volumes]
        if unknown:
            raise DataError(root / "splits.json", f"split '{split}' names volumes not in DL_info.csv: {unknown[:3]}")
        return list(splits[split])
    if split in ("train", "val", "test"):
        return dataset.keys(split)
    known = sorted(set(splits or {}) | {"train", "val", "test"})
    raise DataError(root, f"unknown split '{split}'; known: {', '.join(known)}")
