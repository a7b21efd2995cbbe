import numpy as np
import pytest
import torch

from lesion_harvester.config import MSCNConfig, PreprocessConfig, ScanConfig
from lesion_harvester.errors import DataError
from lesion_harvester.lpg.model import MSCN, load_imagenet_densenet
from lesion_harvester.lpg.scan import Scanner
from lesion_harvester.preprocessing import PreparedVolume

SMALL = MSCNConfig(init_features=8, growth_rate=4, block_config=(2, 2, 2), neck_channels=16, head_channels=16)


def _model(cfg=SMALL, seed=0):
    torch.manual_seed(seed)
    model = MSCN(cfg).eval()
    for m in model.modules():  # non-trivial batch-norm statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model


def _volume(interval_mm, slices=14, h=48, w=40):
    image = np.random.default_rng(1).normal(0, 40, (slices, h, w)).astype(np.float16)
    return PreparedVolume("v", image, (0, 0), 1.0, (interval_mm, 0.8, 0.8), (slices, h, w))


def test_forward_shapes_and_heatmap_prior():
    model = _model()
    hm, wh, reg = model(torch.randn(2, 9, 64, 48))
    assert hm.shape == (2, 1, 16, 12) and wh.shape == reg.shape == (2, 2, 16, 12)
    assert model.hm[-1].bias.item() == pytest.approx(-2.19)
    plain = MSCN(MSCNConfig(**{**SMALL.__dict__, "num_slices": 3}))
    assert not hasattr(plain, "fuse_a") and plain(torch.randn(1, 3, 32, 32))[0].shape == (1, 1, 8, 8)
    with pytest.raises(ValueError, match="expected 9 slices"):
        model(torch.randn(1, 3, 32, 32))


@pytest.mark.parametrize("interval, mode", [(2.0, "exact"), (5.0, "exact"), (5.0, "shared"), (1.0, "exact"),
                                            (float("nan"), "exact")])
def test_shared_scan_equals_naive(interval, mode):
    scanner = Scanner(_model(), PreprocessConfig(context_mode=mode), ScanConfig(batch_slices=3))
    pv = _volume(interval)
    naive = scanner.heatmaps(pv, shared=False)
    shared = scanner.heatmaps(pv, shared=True)
    assert naive.shape == (14, 12, 12)  # 48 x 40 padded to 48 x 48
    assert np.abs(naive - shared).max() <= 1e-4


@pytest.mark.parametrize("mode", ["exact", "shared"])
def test_stride_2_heads_and_their_shared_scan(mode):
    """output_stride 2: maps at half the input, from one more top-down step onto the stem's stride-2
    map (a lateral the stride-4 model does not have); the shared scan still equals the naive one."""
    cfg = MSCNConfig(**{**SMALL.__dict__, "output_stride": 2})
    model = _model(cfg)
    assert model.stride == 2 and hasattr(model, "lat0") and not hasattr(_model(), "lat0")
    hm, wh, reg = model(torch.randn(2, 9, 64, 48))
    assert hm.shape == (2, 1, 32, 24) and wh.shape == reg.shape == (2, 2, 32, 24)
    scanner = Scanner(model, PreprocessConfig(context_mode=mode), ScanConfig(batch_slices=3))
    pv = _volume(5.0)
    naive = scanner.heatmaps(pv, shared=False)
    assert naive.shape == (14, 24, 24)
    assert np.abs(naive - scanner.heatmaps(pv, shared=True)).max() <= 1e-4
    # the stem lateral reaches the heatmap: changing it changes the output
    with torch.no_grad():
        model.lat0.weight.mul_(3.0)
    assert np.abs(scanner.heatmaps(pv, shared=False) - naive).max() > 1e-3


def test_predict_returns_boxes_in_original_pixels():
    scanner = Scanner(_model(), PreprocessConfig(), ScanConfig(top_k=5))
    pv = PreparedVolume("v", _volume(2.0).image, (10, 20), 0.5, (2.0, 1.6, 1.6), (14, 96, 80))
    proposals = scanner.predict(pv, [0, 7])
    assert set(proposals) == {0, 7}
    boxes = proposals[7].boxes_xyxy_px
    assert boxes.shape == (5, 4) and np.all(boxes[:, 2] >= boxes[:, 0])
    # prepared pixel u (0..47 after padding) maps to original (u + 0.5) / 0.5 - 0.5 + crop = 20.5 .. 115.5
    centres = (boxes[:, 0] + boxes[:, 2]) / 2
    assert centres.min() >= 20 - 2 and centres.max() <= 116 + 2
    # clipped to the original image (96 x 80)
    assert boxes[:, [0, 1]].min() >= 0 and boxes[:, 2].max() <= 79 and boxes[:, 3].max() <= 95


def test_imagenet_weights_load_from_a_local_file(tmp_path):
    """A torchvision-format state dict (features.denseblockN.denselayerM.norm1...) maps onto the backbone."""
    model = MSCN(SMALL)
    fake = {}
    for name, tensor in model.state_dict().items():
        prefix = {"stem.0": "features.conv0", "stem.1": "features.norm0", "block1": "features.denseblock1",
                  "trans1": "features.transition1", "block2": "features.denseblock2",
                  "trans2": "features.transition2", "block3": "features.denseblock3"}
        for ours, theirs in prefix.items():
            if name.startswith(ours + "."):
                fake[theirs + name[len(ours):].replace(".layers.", ".")] = torch.full_like(tensor, 0.5)
    fake["classifier.weight"] = torch.zeros(10, 4)
    torch.save(fake, tmp_path / "densenet.pth")
    load_imagenet_densenet(model, tmp_path / "densenet.pth")
    assert torch.all(model.block2.denselayer1.layers.conv1.weight == 0.5)
    assert not torch.all(model.hm[0].weight == 0.5)
    torch.save({"features.conv0.weight": torch.zeros(3, 3)}, tmp_path / "bad.pth")
    with pytest.raises(DataError, match="does not fit this backbone"):
        load_imagenet_densenet(MSCN(SMALL), tmp_path / "bad.pth")


def test_scanning_feeds_the_presets_window_and_pads_with_air():
    from lesion_harvester.geometry.preprocess import normalize_hu, stored_to_hu

    pre = PreprocessConfig(window_hu=(-160.0, 240.0))
    scanner = Scanner(_model(), pre, ScanConfig())
    pv = _volume(2.0)
    x = scanner._volume_tensor(pv)
    h, w = pv.image.shape[1:]
    expected = normalize_hu(stored_to_hu(torch.from_numpy(pv.image.astype(np.float32))), pre.window_hu, 50.0)
    assert torch.allclose(x[:, :h, :w], expected, atol=1e-3)
    assert torch.all(x[:, :, w:] == -50.0)  # air: the bottom of the window, minus the mean


@pytest.mark.parametrize("shared", [True, False])
def test_flip_test_averages_with_the_mirrored_volume(shared):
    import dataclasses

    model, pre = _model(), PreprocessConfig()
    pv = _volume(2.0, slices=6, h=48, w=32)  # a multiple of 16 wide: no padding to mirror
    mirrored = dataclasses.replace(pv, image=np.ascontiguousarray(pv.image[:, :, ::-1]))
    plain = Scanner(model, pre, ScanConfig(batch_slices=4, shared=shared))
    flipped = Scanner(model, pre, ScanConfig(batch_slices=4, shared=shared, flip_test=True))
    expected = (plain.heatmaps(pv, shared) + plain.heatmaps(mirrored, shared)[:, :, ::-1]) / 2
    assert np.abs(flipped.heatmaps(pv, shared) - expected).max() < 1e-5
    assert np.abs(plain.heatmaps(pv, shared) - expected).max() > 1e-3  # the mirrored pass changes something
    boxes = flipped.predict(pv)[0].boxes_xyxy_px
    assert boxes.shape[1] == 4 and (boxes[:, 2] >= boxes[:, 0]).all()


def test_channels_last_scans_to_the_same_heatmaps_and_precisions_are_checked():
    from lesion_harvester.errors import ConfigError

    pv = _volume(2.0)
    plain = Scanner(_model(), PreprocessConfig(), ScanConfig(batch_slices=4)).heatmaps(pv, shared=True)
    nhwc = Scanner(_model(), PreprocessConfig(), ScanConfig(batch_slices=4, channels_last=True))
    assert nhwc.model.stem[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert np.abs(nhwc.heatmaps(pv, shared=True) - plain).max() <= 1e-4
    assert Scanner(_model(), PreprocessConfig(), ScanConfig(amp_dtype="bfloat16")).amp_dtype == torch.bfloat16
    with pytest.raises(ConfigError, match="amp_dtype"):
        ScanConfig(amp_dtype="int8")
