"""Training, resuming and scanning on the tiny synthetic dataset."""

import dataclasses
import pickle

import numpy as np
import pytest
import torch

from lesion_harvester.cli.main import main
from lesion_harvester.config import StackConfig, load_preset
from lesion_harvester.errors import ConfigError, DataError
from lesion_harvester.io.annotations import read_tracklets
from lesion_harvester.lpg import propose as propose_module
from lesion_harvester.lpg import train as train_module
from lesion_harvester.lpg.checkpoint import checkpoint_stack, load_checkpoint, save_checkpoint
from lesion_harvester.lpg.model import load_model
from lesion_harvester.lpg.propose import propose
from lesion_harvester.lpg.train import train_lpg


def _preset(epochs=3):
    preset = load_preset("tiny")
    return dataclasses.replace(preset, lpg_train=dataclasses.replace(preset.lpg_train, epochs=epochs))


def _weights(path):
    return {k: v.clone() for k, v in load_checkpoint(path)["state_dict"].items()}


def test_killed_training_resumes_to_the_same_weights(tiny_dataset, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    train_lpg(tiny_dataset, tmp_path / "full", _preset(), cache_dir=cache, progress=False)
    reference = _weights(tmp_path / "full" / "last.pt")

    real_validate = train_module.validate
    calls = {"n": 0}

    def dies_in_epoch_two(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # the process is killed during epoch 2
        return real_validate(*args, **kwargs)

    monkeypatch.setattr(train_module, "validate", dies_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        train_lpg(tiny_dataset, tmp_path / "killed", _preset(), cache_dir=cache, progress=False)
    assert load_checkpoint(tmp_path / "killed" / "last.pt")["epoch"] == 0
    monkeypatch.setattr(train_module, "validate", real_validate)
    summary = train_lpg(tiny_dataset, tmp_path / "killed", _preset(), cache_dir=cache, progress=False)
    assert [h["epoch"] for h in summary["history"]] == [1, 2, 3]
    resumed = _weights(tmp_path / "killed" / "last.pt")
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)
    assert (tmp_path / "killed" / "best.pt").is_file() and (tmp_path / "killed" / "train_log.json").is_file()
    # the same folder with other settings is refused, not silently mixed
    with pytest.raises(ConfigError, match="other settings"):
        train_lpg(tiny_dataset, tmp_path / "killed", _preset(epochs=4), cache_dir=cache, progress=False)
    # ...but settings of later stages (the LPC's) do not concern it: the finished run stands as is
    other_lpc = dataclasses.replace(_preset(), lpc=dataclasses.replace(_preset().lpc, patch_px=24))
    again = train_lpg(tiny_dataset, tmp_path / "killed", other_lpc, cache_dir=cache, progress=False)
    assert [h["epoch"] for h in again["history"]] == [1, 2, 3]


def test_kept_epoch_follows_the_setting():
    history = [{"epoch": 1, "score": 0.3}, {"epoch": 2, "score": 0.5}, {"epoch": 3, "score": 0.5},
               {"epoch": 4, "score": 0.4}]
    assert train_module.kept_epoch(history, "validation") == 2  # the first of the best
    assert train_module.kept_epoch(history, "last") == 4
    assert train_module.kept_epoch([{"epoch": 1, "score": None}, {"epoch": 2, "score": None}], "validation") == 2
    assert train_module.kept_epoch([], "last") is None


@pytest.mark.parametrize("keep, expected_epoch", [("validation", 0), ("last", 1)])
def test_best_pt_is_the_epoch_the_setting_keeps(tiny_dataset, tmp_path, monkeypatch, keep, expected_epoch):
    # validation that prefers the first epoch: the setting decides whether best.pt follows it
    real_validate = train_module.validate
    scores = iter([0.9, 0.1])

    def falling(*args, **kwargs):
        return {**real_validate(*args, **kwargs), "score": next(scores)}

    monkeypatch.setattr(train_module, "validate", falling)
    preset = _preset(epochs=2)
    preset = dataclasses.replace(preset, lpg_train=dataclasses.replace(preset.lpg_train, keep_epoch=keep))
    summary = train_lpg(tiny_dataset, tmp_path / keep, preset, cache_dir=tmp_path / "cache", progress=False)
    assert summary["kept_epoch"] == expected_epoch + 1 and summary["best_score"] == 0.9
    assert load_checkpoint(tmp_path / keep / "best.pt")["epoch"] == expected_epoch


def test_checkpoints_load_without_running_code(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("should never run",))

    torch.save({"format": "lesion-harvester-lpg/1", "x": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(DataError, match="not a loadable checkpoint"):
        load_checkpoint(tmp_path / "evil.pt")
    torch.save({"format": "something-else"}, tmp_path / "other.pt")
    with pytest.raises(DataError, match="not a Lesion Harvester LPG checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_propose_resumes_after_a_kill(tiny_dataset, tiny_checkpoint, tmp_path, monkeypatch):
    clean = propose(tiny_dataset, tiny_checkpoint, tmp_path / "clean.pkl", split="harvest", progress=False)
    real_scan = propose_module.scan_volumes

    def dies_after_first_volume(scanner, keys, prepare, stack, on_volume, *args):
        def save_then_die(key, tracklets):
            on_volume(key, tracklets)
            raise KeyboardInterrupt

        return real_scan(scanner, keys, prepare, stack, save_then_die, *args)

    monkeypatch.setattr(propose_module, "scan_volumes", dies_after_first_volume)
    with pytest.raises(KeyboardInterrupt):
        propose(tiny_dataset, tiny_checkpoint, tmp_path / "killed.pkl", split="harvest", progress=False)
    assert len(list((tmp_path / "killed.pkl.partial").glob("*.pkl"))) == 1
    assert not (tmp_path / "killed.pkl").exists()
    monkeypatch.setattr(propose_module, "scan_volumes", real_scan)
    resumed = propose(tiny_dataset, tiny_checkpoint, tmp_path / "killed.pkl", split="harvest", progress=False)
    assert not (tmp_path / "killed.pkl.partial").exists()
    assert list(resumed) == list(clean)
    for key in clean:
        assert len(resumed[key]) == len(clean[key])
        for a, b in zip(resumed[key], clean[key]):
            assert np.array_equal(a.z_indices, b.z_indices) and np.allclose(a.boxes_xyxy_px, b.boxes_xyxy_px)
    raw = pickle.load(open(tmp_path / "killed.pkl", "rb"))
    assert set(raw) == set(clean)


def test_the_stacking_settings_travel_with_the_checkpoint(tiny_dataset, tiny_checkpoint, tmp_path, monkeypatch):
    tiny = load_preset("tiny").stack
    assert tiny != StackConfig()  # the CPU presets link at a lower IoU than the paper
    assert checkpoint_stack(tiny_checkpoint) == tiny
    old = {k: v for k, v in load_checkpoint(tiny_checkpoint).items() if k != "stack"}
    save_checkpoint(tmp_path / "old.pt", old)
    assert checkpoint_stack(tmp_path / "old.pt") == StackConfig()
    # propose stacks with the checkpoint's settings; --score-threshold replaces only t_G
    seen = []
    monkeypatch.setattr(propose_module, "scan_volumes",
                        lambda _scanner, todo, _prepare, stack, on_volume, *a:
                        seen.append(stack) or [on_volume(key, []) for key in todo])
    assert main(["propose", str(tiny_dataset), "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "d.pkl"),
                 "--split", "detection_test", "--score-threshold", "0.3"]) == 0
    assert seen == [dataclasses.replace(tiny, score_threshold=0.3)]


def test_cli_train_and_propose_on_every_input_kind(tiny_dataset, tiny_checkpoint, tmp_path, capsys):
    from tests.conftest import shared_path

    out = tmp_path / "dets.pkl"
    assert main(["propose", str(tiny_dataset), "--checkpoint", str(tiny_checkpoint), "--out", str(out),
                 "--split", "detection_test", "--score-threshold", "0.05"]) == 0
    tracklets = read_tracklets(out)
    assert len(tracklets) == load_preset("tiny").synth.detection_test
    assert all(t.score > 0.05 for ts in tracklets.values() for t in ts)
    assert (tmp_path / "dets.csv").is_file()
    nifti = shared_path("real_ct", "totalsegmentator", "example_ct_sm.nii.gz")
    assert main(["propose", str(nifti), "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "n.pkl")]) == 0
    assert list(read_tracklets(tmp_path / "n.pkl")) == ["example_ct_sm"]
    single = shared_path("real_ct", "pydicom", "CT_small.dcm")
    assert main(["propose", str(single), "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "s.pkl")]) == 2
    assert "single-slice volume" in capsys.readouterr().err
    model, cfg, pre = load_model(tiny_checkpoint)
    assert cfg.num_slices == 9 and not model.training


def test_volumes_prepared_by_loader_workers_scan_to_the_same_proposals(tiny_dataset, tiny_checkpoint, tmp_path):
    from lesion_harvester.config import ScanConfig

    thread = propose(tiny_dataset, tiny_checkpoint, tmp_path / "a.pkl", split="harvest", progress=False,
                     cache_dir=tmp_path / "cache_a")
    workers = propose(tiny_dataset, tiny_checkpoint, tmp_path / "b.pkl", split="harvest", progress=False,
                      cache_dir=tmp_path / "cache_b", scan=ScanConfig(batch_slices=4, loader_workers=2))
    assert list(thread) == list(workers)
    # float tolerance: with 2 threads, a convolution's sums may be split differently while the
    # background thread prepares the next volume (measured: up to 8e-6 px)
    for key in thread:
        assert len(thread[key]) == len(workers[key])
        for a, b in zip(thread[key], workers[key]):
            assert np.array_equal(a.z_indices, b.z_indices)
            assert np.allclose(a.boxes_xyxy_px, b.boxes_xyxy_px, atol=1e-4) and np.allclose(a.scores, b.scores)
    assert len(list((tmp_path / "cache_b").rglob("*.npy"))) == len(thread)  # the workers filled the cache
