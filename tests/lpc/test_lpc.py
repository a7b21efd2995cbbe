"""The lesion proposal classifier: patches centred on proposals, the three variants, checkpoints."""

import dataclasses

import numpy as np
import pytest
import torch

from lesion_harvester.config import LPCConfig
from lesion_harvester.errors import DataError
from lesion_harvester.geometry.preprocess import normalize_hu
from lesion_harvester.lpc.model import LesionProposalClassifier
from lesion_harvester.lpc.patches import extract_patches
from lesion_harvester.lpc.train import load_lpc, matched_weights, predict_lpc, save_lpc
from lesion_harvester.preprocessing import PreparedVolume
from lesion_harvester.structures import Tracklet


def _volume_with_a_lesion():
    hu = np.full((20, 64, 64), -100.0)
    hu[8:13, 28:36, 28:36] = 150.0  # a bright 8 x 8 px lesion over slices 8-12
    image = normalize_hu(hu).astype(np.float16)
    return PreparedVolume("v", image, (0, 0), 1.0, (2.0, 1.0, 1.0), (20, 64, 64))


def _tracklet():
    boxes = np.tile([28.0, 28.0, 35.0, 35.0], (5, 1))
    return Tracklet(np.arange(8, 13), boxes, np.array([0.2, 0.5, 0.9, 0.5, 0.2]))


def test_multiview_patches_are_centred_on_the_proposal():
    cfg = LPCConfig(variant="multiview", patch_px=16, pad_px=8, windows_hu=((-160.0, 240.0),))
    patches = extract_patches(_volume_with_a_lesion(), [_tracklet()], cfg)
    assert patches.shape == (1, 3, 1, 16, 16)
    lesion, background = (150 + 160) / 400, (-100 + 160) / 400  # through the window, in [0, 1]
    for view in range(3):  # axial, coronal, sagittal: lesion in the middle, background at the corners
        assert float(patches[0, view, 0, 8, 8]) == pytest.approx(lesion, abs=0.02)
        assert float(patches[0, view, 0, 0, 0]) == pytest.approx(background, abs=0.02)


@pytest.mark.parametrize("variant", ["multiview", "3d"])
def test_the_close_up_adds_a_finer_patch_after_the_context(variant):
    window = ((-160.0, 240.0),)
    context = LPCConfig(variant=variant, patch_px=16, pad_px=16, windows_hu=window)
    both = LPCConfig(variant=variant, patch_px=16, pad_px=16, close_up_pad_px=2, windows_hu=window)
    plain = extract_patches(_volume_with_a_lesion(), [_tracklet()], context)
    two = extract_patches(_volume_with_a_lesion(), [_tracklet()], both)
    axis = 2  # (N, V, C, *P): every variant's channels
    assert two.shape[axis] == 2 and torch.equal(two.narrow(axis, 0, 1), plain)
    # the 8 px lesion fills a larger share of the close-up (8 of 12 px across) than of the context (8 of 40)
    lesion = (two > 0.7).float()
    assert float(lesion.narrow(axis, 1, 1).mean()) > 3 * float(lesion.narrow(axis, 0, 1).mean())
    model = LesionProposalClassifier(dataclasses.replace(both, widen_factor=0.25))
    assert predict_lpc(model, two).shape == (1,)


@pytest.mark.parametrize("variant, shape", [("multiview", (2, 3, 3, 16, 16)), ("axial", (2, 1, 3, 16, 16)),
                                            ("3d", (2, 1, 3, 16, 16, 16))])
def test_every_variant_gives_one_probability_per_proposal(variant, shape):
    cfg = LPCConfig(variant=variant, patch_px=16, widen_factor=0.25)
    patches = extract_patches(_volume_with_a_lesion(), [_tracklet(), _tracklet()], cfg)
    assert patches.shape == shape
    probabilities = predict_lpc(LesionProposalClassifier(cfg), patches)
    assert probabilities.shape == (2,) and np.all((probabilities > 0) & (probabilities < 1))


def test_checkpoint_round_trip_and_a_bad_file(tmp_path):
    cfg = LPCConfig(patch_px=16, widen_factor=0.25)
    torch.manual_seed(0)
    model = LesionProposalClassifier(cfg)
    save_lpc(tmp_path / "lpc.pt", model, cfg, fold=1)
    loaded, loaded_cfg, payload = load_lpc(tmp_path / "lpc.pt")
    assert loaded_cfg == cfg and payload["fold"] == 1
    x = torch.rand(2, 3, 3, 16, 16)
    assert np.allclose(predict_lpc(model, x), predict_lpc(loaded, x))
    assert [p.name for p in tmp_path.iterdir()] == ["lpc.pt"]  # no temporary file left behind
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(DataError, match="junk.pt: not a loadable LPC checkpoint"):
        load_lpc(tmp_path / "junk.pt")
    with pytest.raises(DataError, match="LPC checkpoint not found"):
        load_lpc(tmp_path / "missing.pt")


@pytest.mark.parametrize("close_up", [0.0, 8.0])
def test_imagenet_weights_load_from_a_local_file(tmp_path, close_up):
    from lesion_harvester.lpc.model import _resnet18

    torch.manual_seed(0)
    state = _resnet18(2, 3, 1.0).state_dict()  # stands in for torchvision's resnet18 state dict
    state["fc.weight"], state["fc.bias"] = torch.zeros(1000, 512), torch.zeros(1000)
    torch.save(state, tmp_path / "resnet18.pth")
    cfg = LPCConfig(patch_px=16, close_up_pad_px=close_up, pretrained_path=str(tmp_path / "resnet18.pth"))
    model = LesionProposalClassifier(cfg)
    first = model.branches[2].state_dict()["conv1.weight"]
    if close_up:  # both channel groups start from the RGB filters, halved
        assert torch.allclose(first, torch.cat([state["conv1.weight"]] * 2, dim=1) / 2)
    else:
        assert torch.equal(first, state["conv1.weight"])
    assert torch.equal(model.branches[0].state_dict()["layer4.1.conv2.weight"], state["layer4.1.conv2.weight"])
    with pytest.raises(DataError, match="widen_factor 1.0"):
        LesionProposalClassifier(dataclasses.replace(cfg, widen_factor=0.5))


def test_matched_negatives_take_the_positives_distribution_of_size_and_score():
    rng = np.random.default_rng(0)
    positives = np.column_stack([rng.uniform(20, 60, 200), rng.uniform(0.5, 1.0, 200)])  # large, high s_g
    small = np.column_stack([rng.uniform(4, 12, 900), rng.uniform(0.1, 0.3, 900)])  # most negatives
    alike = np.column_stack([rng.uniform(20, 60, 100), rng.uniform(0.5, 1.0, 100)])  # a few like the positives
    weights = matched_weights(positives, np.concatenate([small, alike]))
    assert weights.shape == (1000,) and weights.sum() == pytest.approx(1.0) and (weights > 0).all()
    assert weights[900:].sum() > 0.9  # the tenth that looks like the positives is drawn nine times in ten
    mean = weights @ np.concatenate([small, alike])
    assert mean == pytest.approx(positives.mean(axis=0), rel=0.1)
    assert matched_weights(positives, small[:0]).shape == (0,)


def test_the_variants_registered_are_the_choices_of_the_setting():
    import typing

    from lesion_harvester.config import LPCVariant
    from lesion_harvester.lpc.variants import VARIANTS

    assert VARIANTS.names() == list(typing.get_args(LPCVariant))
    for name, variant in VARIANTS.items():  # the patches each variant makes are the ones its network reads
        cfg = LPCConfig(variant=name, patch_px=16, widen_factor=0.25)
        patches = extract_patches(_volume_with_a_lesion(), [_tracklet()], cfg)
        assert patches.shape == (1, variant.views, 3) + (16,) * variant.spatial_dims
        assert len(LesionProposalClassifier(cfg).branches) == variant.views
