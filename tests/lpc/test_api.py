"""lpc/api.py: patches of many proposals, K-fold training, and ``classify`` on a proposal file."""

import csv
import pickle

import numpy as np
import pytest
import torch

from lesion_harvester.config import LPCConfig, PreprocessConfig, load_preset, to_dict
from lesion_harvester.errors import ConfigError, DataError
from lesion_harvester.geometry.preprocess import normalize_hu
from lesion_harvester.io.annotations import read_tracklets, write_tracklets
from lesion_harvester.io.loader import open_volumes
from lesion_harvester.io.splits import read_splits
from lesion_harvester.lpc.api import LPCExamples, classify_proposals, proposal_patches, train_lpc_folds
from lesion_harvester.lpc.model import LesionProposalClassifier
from lesion_harvester.lpc.patches import extract_patches
from lesion_harvester.lpc.train import load_lpc, predict_lpc, save_lpc
from lesion_harvester.preprocessing import PreparedVolume, prepare_volume
from lesion_harvester.structures import Tracklet

CFG = LPCConfig(patch_px=16, pad_px=4.0, widen_factor=0.125, epochs=1, batch_size=4, windows_hu=((-160.0, 240.0),))


def _volume(key: str, x0: int, background_hu: float = -100.0) -> PreparedVolume:
    hu = np.full((12, 64, 64), background_hu)
    hu[4:8, 20:28, x0:x0 + 8] = 150.0  # one bright lesion, at a different place in each volume
    return PreparedVolume(key, normalize_hu(hu).astype(np.float16), (0, 0), 1.0, (2.0, 1.0, 1.0), (12, 64, 64))


# no patch of one is a patch of another; c is a harvest volume (its marked lesion a positive of every fold)
VOLUMES = {"a": _volume("a", 10), "b": _volume("b", 40, -70.0), "c": _volume("c", 30, -40.0)}


def _at(x0: float, score: float = 0.8) -> Tracklet:
    return Tracklet(np.arange(4, 8), np.tile([x0, 20.0, x0 + 7, 27.0], (4, 1)), np.full(4, score))


@pytest.mark.parametrize("workers", [0, 2])
def test_proposal_patches_keep_the_order_given_across_volumes(workers):
    import dataclasses

    items = [("b", _at(40)), ("a", _at(10)), ("b", _at(5)), ("a", _at(50))]  # volumes interleaved
    patches = proposal_patches(items, VOLUMES.__getitem__, dataclasses.replace(CFG, loader_workers=workers))
    assert patches.dtype == torch.float16 and patches.shape == (4, 3, 1, 16, 16)
    for i, (key, t) in enumerate(items):  # each row is that item's own patch, as extract_patches makes it
        expected = extract_patches(VOLUMES[key], [t], CFG)[0].half()
        assert torch.equal(patches[i], expected)
    assert patches[0, 0, 0, 8, 8] > 0.6 and patches[2, 0, 0, 8, 8] < 0.3  # lesion / background at the centre
    assert proposal_patches([], VOLUMES.__getitem__, CFG).numel() == 0


def _examples() -> LPCExamples:
    vm_items = [("a", _at(10)), ("a", _at(45)), ("b", _at(40)), ("b", _at(5))]
    return LPCExamples(vm_items, np.array([1, 0, 1, 0], dtype=np.int64), [("c", _at(30, 0.9))])


def test_examples_count_positives_and_negatives():
    assert _examples().counts() == {"positives": 3, "negatives": 2}


def test_each_fold_is_trained_without_its_volumes_and_resumes(tmp_path, monkeypatch):
    import lesion_harvester.lpc.api as api

    seen = []

    trained_on = []

    def fake_train(x, y, cfg, device, seed, progress, desc, negative_weights=None, init=None):  # what each fold sees
        assert init is None  # pretraining is off by default
        seen.append((len(x), y.tolist(), seed, desc))
        trained_on.append(x.clone())
        torch.manual_seed(seed)
        return LesionProposalClassifier(cfg)

    monkeypatch.setattr(api, "train_lpc", fake_train)
    paths = [tmp_path / "fold0.pt", tmp_path / "fold1.pt"]
    pre = PreprocessConfig(spacing_mm=2.0)
    train_lpc_folds(_examples(), [["a"], ["b"]], VOLUMES.__getitem__, CFG, pre, paths, seed=100, progress=False,
                    desc="round 1 LPC")
    # fold 0 holds volume a out: b's two V_M proposals and the positive; fold 1 the reverse
    assert seen == [(3, [1, 0, 1], 100, "round 1 LPC fold 1/2"), (3, [1, 0, 1], 101, "round 1 LPC fold 2/2")]
    # checked on the patches each fold trained on: none of its held-out volume's, all of the other's
    examples = _examples()
    for fold, x in zip(["a", "b"], trained_on):
        for key, t in examples.vm_items:
            patch = extract_patches(VOLUMES[key], [t], CFG)[0].half().float()
            assert any(torch.equal(patch, row) for row in x) == (key != fold), (fold, key)
    _, _, payload = load_lpc(paths[0])
    assert payload["held_out"] == ["a"] and payload["preprocess"] == to_dict(pre)
    seen.clear()
    paths[0].unlink()
    train_lpc_folds(_examples(), [["a"], ["b"]], VOLUMES.__getitem__, CFG, pre, paths, seed=100, progress=False,
                    skip_existing=True)
    assert [s[2] for s in seen] == [100]  # only the missing fold is trained again
    seen.clear()
    train_lpc_folds(_examples(), [[]], VOLUMES.__getitem__, CFG, pre, [tmp_path / "one.pt"], seed=7, progress=False)
    assert seen == [(5, [1, 0, 1, 0, 1], 7, "LPC")]  # one fold holds nothing out
    with pytest.raises(ValueError, match="2 folds but 1 output paths"):
        train_lpc_folds(_examples(), [["a"], ["b"]], VOLUMES.__getitem__, CFG, pre, paths[:1])


def test_pretraining_learns_the_lpg_scores_of_unlabelled_proposals_and_each_fold_starts_there(tmp_path,
                                                                                                monkeypatch):
    import dataclasses

    import lesion_harvester.lpc.api as api
    from lesion_harvester.lpc.train import pretrain_lpc

    cfg = dataclasses.replace(CFG, pretrain="lpg_scores", pretrain_epochs=40, lr=0.003)
    # c's lesion scored high by the LPG, its background low: pretraining must learn to tell them apart
    unlabelled = [("c", _at(30, 0.95)), ("c", _at(30.5, 0.9)), ("c", _at(2, 0.05)), ("c", _at(50, 0.1))]
    x = proposal_patches(unlabelled, VOLUMES.__getitem__, cfg)
    state = pretrain_lpc(x, np.array([t.score for _, t in unlabelled]), cfg, seed=3, progress=False)
    model = LesionProposalClassifier(cfg)
    model.load_state_dict(state)
    s_c = predict_lpc(model, x.float())
    assert min(s_c[:2]) > max(s_c[2:])
    with pytest.raises(ValueError, match="one s_g per patch"):
        pretrain_lpc(x, np.array([0.5]), cfg, progress=False)

    starts = []

    def fake_train(x, y, cfg, device, seed, progress, desc, negative_weights=None, init=None):
        starts.append(init)
        return LesionProposalClassifier(cfg)

    monkeypatch.setattr(api, "train_lpc", fake_train)
    examples = dataclasses.replace(_examples(), unlabelled=unlabelled)
    paths = [tmp_path / "fold0.pt", tmp_path / "fold1.pt"]
    train_lpc_folds(examples, [["a"], ["b"]], VOLUMES.__getitem__, cfg, PreprocessConfig(), paths, progress=False)
    # both folds start from one pretrained LPC, which saw only volume c (no fold's held-out volume)
    assert starts[0] is starts[1] and set(starts[0]) == set(LesionProposalClassifier(cfg).state_dict())
    assert load_lpc(paths[0])[2]["pretrained_on"] == ["c"]
    with pytest.raises(ConfigError, match="lpc.pretrain: lpg_scores needs proposals in V_H"):
        train_lpc_folds(_examples(), [["a"], ["b"]], VOLUMES.__getitem__, cfg, PreprocessConfig(),
                        [tmp_path / "y0.pt", tmp_path / "y1.pt"])
    with pytest.raises(ValueError, match="proposals of a V_M volume"):
        train_lpc_folds(dataclasses.replace(_examples(), unlabelled=[("a", _at(10))]), [["a"], ["b"]],
                        VOLUMES.__getitem__, cfg, PreprocessConfig(), [tmp_path / "x0.pt", tmp_path / "x1.pt"])


def test_classify_writes_fused_scores_and_a_csv(tiny_dataset, tmp_path):
    preset = load_preset("tiny")
    key = sorted(read_splits(tiny_dataset)["harvest"])[0]
    t1 = Tracklet(np.array([2, 3]), np.array([[20.0, 20, 40, 40], [21.0, 21, 41, 41]]), np.array([0.5, 0.8]))
    t2 = Tracklet.single_slice(4, (50.0, 50.0, 60.0, 60.0), 0.3)
    write_tracklets(tmp_path / "dets.pkl", {key: [t1, t2], "empty_volume_key_000-001": []})
    cfg = LPCConfig(patch_px=16, widen_factor=0.125)
    torch.manual_seed(0)
    model = LesionProposalClassifier(cfg)
    save_lpc(tmp_path / "lpc.pt", model, cfg, preprocess=to_dict(preset.preprocess))
    scored = classify_proposals(tiny_dataset, tmp_path / "lpc.pt", tmp_path / "dets.pkl", tmp_path / "scored.pkl")
    rows = list(csv.DictReader(open(tmp_path / "scored.csv")))
    assert [r["tracklet"] for r in rows] == ["0", "1"]
    for row, original, fused in zip(rows, (t1, t2), scored[key]):
        s_g, s_c, s = float(row["s_g"]), float(row["s_c"]), float(row["s"])
        assert s_g == pytest.approx(original.score) and 0 < s_c < 1 and s == pytest.approx(s_g * s_c, abs=1e-5)
        assert fused.score == pytest.approx(s, abs=1e-5) and np.array_equal(fused.z_indices, original.z_indices)
    assert read_tracklets(tmp_path / "scored.pkl")[key][0].score == pytest.approx(scored[key][0].score)
    assert pickle.load(open(tmp_path / "scored.pkl", "rb"))["empty_volume_key_000-001"] == []
    # s_c is what the model says of the proposal's patch
    pv = prepare_volume(open_volumes(tiny_dataset).load(key), preset.preprocess)
    expected = predict_lpc(model, extract_patches(pv, [t1], cfg).half().float())
    assert float(rows[0]["s_c"]) == pytest.approx(float(expected[0]), abs=1e-5)


def test_classify_needs_a_checkpoint_that_records_its_preprocessing(tiny_dataset, tmp_path):
    cfg = LPCConfig(patch_px=16, widen_factor=0.125)
    save_lpc(tmp_path / "old.pt", LesionProposalClassifier(cfg), cfg)
    write_tracklets(tmp_path / "dets.pkl", {})
    with pytest.raises(DataError, match="does not record its preprocessing"):
        classify_proposals(tiny_dataset, tmp_path / "old.pt", tmp_path / "dets.pkl", tmp_path / "out.pkl")
    assert not (tmp_path / "out.pkl").exists()


def test_v_h_negatives_join_every_fold_and_never_come_from_v_m(tmp_path, monkeypatch):
    import dataclasses

    import lesion_harvester.lpc.api as api

    trained = []

    def fake_train(x, y, cfg, device, seed, progress, desc, negative_weights=None, init=None):
        trained.append((x.clone(), y.tolist(), None if negative_weights is None else negative_weights.tolist()))
        return LesionProposalClassifier(cfg)

    monkeypatch.setattr(api, "train_lpc", fake_train)
    base = _examples()
    negative = ("c", _at(2, 0.3))  # a V_H proposal away from c's lesion
    examples = dataclasses.replace(base, negatives=[negative])
    assert examples.counts() == {"positives": 3, "negatives": 3}
    paths = [tmp_path / "fold0.pt", tmp_path / "fold1.pt"]
    matched = dataclasses.replace(CFG, negatives="matched")
    train_lpc_folds(examples, [["a"], ["b"]], VOLUMES.__getitem__, matched, PreprocessConfig(), paths, progress=False)
    patch = extract_patches(VOLUMES["c"], [negative[1]], CFG)[0].half().float()
    for x, y, weights in trained:  # each fold: its other volume's two V_M proposals, the positive, the negative
        assert y == [1, 0, 1, 0] and torch.equal(x[-1], patch)
        assert len(weights) == 2  # the matched weights cover V_M's negative and V_H's
    with pytest.raises(ValueError, match="V_H negatives include proposals of a V_M volume"):
        train_lpc_folds(dataclasses.replace(base, negatives=[("a", _at(45))]), [["a"], ["b"]], VOLUMES.__getitem__,
                        CFG, PreprocessConfig(), [tmp_path / "x0.pt", tmp_path / "x1.pt"], progress=False)
