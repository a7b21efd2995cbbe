"""The prepared-volume cache: where it lives, and several processes filling it at once."""

import multiprocessing

import numpy as np

from lesion_harvester.config import load_preset
from lesion_harvester.dataset.prepared_cache import PreparedCache
from lesion_harvester.io.loader import open_volumes
from lesion_harvester.paths import CACHE_FOLDER, cache_dir_for


def _prepare(args) -> np.ndarray:
    data, cache_root, key = args
    cache = PreparedCache(cache_root, load_preset("tiny").preprocess)
    return np.asarray(cache.get(open_volumes(data), key).image, dtype=np.float32)


def test_processes_filling_one_cache_at_once_read_whole_volumes(tiny_dataset, tmp_path):
    keys = open_volumes(tiny_dataset).keys[:2]
    root = cache_dir_for(tiny_dataset, tmp_path / "shared")
    jobs = [(tiny_dataset, root, key) for key in keys for _ in range(3)]  # three processes per volume
    # (spawned: a forked child of a process whose OpenMP threads have run may hang in torch)
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        images = pool.map(_prepare, jobs)
    for i, key in enumerate(keys):
        for image in images[3 * i:3 * i + 3]:
            assert np.array_equal(image, images[3 * i])
        again = _prepare((tiny_dataset, root, key))  # read back from the cache
        assert np.array_equal(again, images[3 * i])
    folder = next(root.iterdir())
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{k}{ext}" for k in keys for ext in (".json", ".npy"))


def test_a_chosen_cache_folder_keeps_datasets_apart_and_data_untouched(tiny_dataset, tmp_path):
    assert cache_dir_for(tiny_dataset) == tiny_dataset / CACHE_FOLDER
    other = tmp_path / "copy" / tiny_dataset.name  # another dataset with the same volume names
    assert cache_dir_for(tiny_dataset, tmp_path) != cache_dir_for(other, tmp_path)
    assert cache_dir_for(tiny_dataset, tmp_path).parent == tmp_path
    before = sorted(p.relative_to(tiny_dataset) for p in tiny_dataset.rglob("*"))
    key = open_volumes(tiny_dataset).keys[-1]
    _prepare((tiny_dataset, cache_dir_for(tiny_dataset, tmp_path / "elsewhere"), key))
    assert sorted(p.relative_to(tiny_dataset) for p in tiny_dataset.rglob("*")) == before
    assert list((tmp_path / "elsewhere").rglob(f"{key}.npy"))


def test_the_cache_option_defaults_to_the_environment(monkeypatch):
    from lesion_harvester.cli.main import build_parser

    monkeypatch.setenv("LESION_HARVESTER_CACHE_DIR", "/somewhere/cache")
    for command in (["train-lpg", "d", "--out", "o"], ["propose", "d", "--checkpoint", "c", "--out", "o"],
                    ["harvest", "d", "--out", "o"], ["classify", "d", "--checkpoint", "c", "--proposals", "p",
                                                     "--out", "o"]):
        assert build_parser().parse_args(command).cache_dir == "/somewhere/cache", command[0]
    assert build_parser().parse_args(["harvest", "d", "--out", "o", "--cache-dir", "x"]).cache_dir == "x"
