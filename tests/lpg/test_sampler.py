"""Training crops: targets follow every augmentation; background avoids known lesions."""

import dataclasses

import numpy as np
import pytest

from lesion_harvester.config import LPGTrainConfig, PreprocessConfig
from lesion_harvester.lpg.data import CropSampler, SliceRecord, TrainingData, epoch_loader
from lesion_harvester.lpg.targets import batch_targets
from lesion_harvester.preprocessing import PreparedVolume


def _volume():
    image = np.full((5, 64, 64), -50, np.float16)
    image[:, 10:20, 30:50] = 100  # a bright 20 x 10 px "lesion" on every slice
    return PreparedVolume("v", image, (0, 0), 1.0, (2.0, 1.0, 1.0), (5, 64, 64))


def centernet(crops):
    """The MSCN's targets at stride 4 (what the sampler's crops are turned into for the LPG)."""
    return batch_targets(crops, 4, 32)


def _one(sampler):
    """One crop of ``sampler``: its image and its CenterNet targets (batch of one)."""
    crop = sampler.sample()
    return crop.image, {k: v[0].numpy() for k, v in centernet([crop]).items()}


def _sampler(**overrides):
    record = SliceRecord("v", 2, np.array([[30.0, 10.0, 49.0, 19.0]]), np.zeros((0, 4)))
    cfg = LPGTrainConfig(**{"crop_px": 32, "scale_jitter": (1.0, 1.0), "background_fraction": 0.0, **overrides})
    return CropSampler(TrainingData(["v"], [record]), {"v": _volume()}, 9, PreprocessConfig(), cfg,
                       np.random.default_rng(0))


@pytest.mark.parametrize("overrides", [{}, {"hflip": True, "rotate90": True}])
def test_targets_frame_the_lesion_after_augmentation(overrides):
    sampler = _sampler(**overrides)
    for _ in range(24):
        x, t = _one(sampler)
        iy, ix = divmod(int(t["ind"][0]), 8)
        cx, cy = (ix + t["reg"][0][0] + 0.5) * 4 - 0.5, (iy + t["reg"][0][1] + 0.5) * 4 - 0.5
        w, h = t["wh"][0] * 4
        y0, y1, x0, x1 = (int(np.clip(round(v), 0, 31)) for v in (cy - h / 2 + 0.5, cy + h / 2 - 0.5,
                                                                    cx - w / 2 + 0.5, cx + w / 2 - 0.5))
        inside = x[4, y0:y1 + 1, x0:x1 + 1]
        assert inside.min() > 90  # the box covers only lesion pixels...
        assert abs(int((x[4] > 90).sum()) - inside.size) <= 2  # ...and all of them


def test_intensity_jitter_changes_contrast_and_noise_adds_seeded_noise():
    # the first crop's geometry is drawn before any intensity change, so all three see the same pixels
    plain = _sampler().sample().image
    jittered = _sampler(intensity_jitter=0.2).sample().image
    noisy = _sampler(noise_hu=10.0).sample().image
    assert plain.shape == jittered.shape == noisy.shape == (9, 32, 32)
    # jitter: an affine map of the plain crop, contrast in [0.8, 1.2], and not the identity
    slope, offset = np.polyfit(plain.ravel(), jittered.ravel(), 1)
    assert 0.8 <= slope <= 1.2 and np.allclose(jittered, slope * plain + offset, atol=1e-3)
    assert not np.allclose(jittered, plain, atol=1e-3)
    # noise: zero-mean, independent per pixel, at most 10 HU (255 / 4095 network units per HU)
    residual = noisy - plain
    assert 0 < residual.std() <= 10 * 255 / 4095 and abs(residual.mean()) < 0.2 * residual.std() + 1e-3
    assert abs(np.corrcoef(residual[4, :, :-1].ravel(), residual[4, :, 1:].ravel())[0, 1]) < 0.2
    # seeded: the same seed gives the same noise, another seed other noise
    again = _sampler(noise_hu=10.0).sample().image
    other = _sampler(noise_hu=10.0)
    other.rng = np.random.default_rng(1)
    assert np.array_equal(noisy, again) and not np.array_equal(noisy, other.sample().image)


def test_background_crops_avoid_known_lesions():
    record = SliceRecord("v", 2, np.array([[30.0, 10.0, 49.0, 19.0]]), np.zeros((0, 4)))
    data = TrainingData(["v"], [record], exclusions={"v": [(0, 4, np.array([30.0, 10.0, 49.0, 19.0]))]})
    sampler = CropSampler(data, {"v": _volume()}, 9, PreprocessConfig(),
                          LPGTrainConfig(crop_px=16, background_fraction=1.0, scale_jitter=(1.0, 1.0)),
                          np.random.default_rng(1))
    for _ in range(40):
        picked = sampler._background()
        if picked is None:
            continue
        _, _, y0, x0, src, _, _ = picked
        assert x0 > 49 or x0 + src - 1 < 30 or y0 > 19 or y0 + src - 1 < 10
    assert data.excluded("v", 3, np.array([35.0, 12.0, 40.0, 15.0]))
    assert not data.excluded("v", 3, np.array([0.0, 40.0, 5.0, 45.0]))


def test_batches_do_not_depend_on_the_workers_or_the_ranks_that_draw_them():
    def make():
        return _sampler(rotate90=True, noise_hu=5.0, background_fraction=0.3)

    in_process = list(epoch_loader(make, centernet, seed=3, epoch=1, count=5, batch_size=4, workers=0))
    one_worker = list(epoch_loader(make, centernet, seed=3, epoch=1, count=5, batch_size=4, workers=1))
    two_workers = list(epoch_loader(make, centernet, seed=3, epoch=1, count=5, batch_size=4, workers=2))
    other_epoch = list(epoch_loader(make, centernet, seed=3, epoch=2, count=5, batch_size=4, workers=0))
    assert len(one_worker) == len(two_workers) == 5
    for a, b, c in zip(in_process, one_worker, two_workers):
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[0], c[0])
        assert np.array_equal(a[1]["hm"], c[1]["hm"]) and np.array_equal(a[1]["wh"], c[1]["wh"])
    assert not np.array_equal(in_process[0][0], other_epoch[0][0])
    assert not np.array_equal(in_process[0][0], in_process[1][0])  # every batch is drawn anew
    # two ranks, each drawing half of every batch: together the one-process batches
    halves = [list(epoch_loader(make, centernet, seed=3, epoch=1, count=5, batch_size=4, workers=w, samples=share))
              for w, share in ((0, (0, 2)), (1, (2, 4)))]
    for whole, first, second in zip(in_process, *halves):
        assert np.array_equal(whole[0], np.concatenate([first[0], second[0]]))
        assert np.array_equal(whole[1]["ind"], np.concatenate([first[1]["ind"], second[1]["ind"]]))


def test_object_crops_are_not_swamped_by_hard_negatives():
    positive = SliceRecord("v", 2, np.array([[30.0, 10.0, 49.0, 19.0]]), np.zeros((0, 4)))
    negatives = [SliceRecord("v", z, np.zeros((0, 4)), np.array([[5.0, 40.0, 12.0, 47.0]])) for z in (0, 1, 3, 4)]
    cfg = LPGTrainConfig(crop_px=32, background_fraction=0.0, scale_jitter=(1.0, 1.0))
    sampler = CropSampler(TrainingData(["v"], [positive] + negatives), {"v": _volume()}, 9, PreprocessConfig(),
                          cfg, np.random.default_rng(2))
    on_positive = sum(sampler._around_object()[1] == 2 for _ in range(400))
    # 4 of 5 slices hold only negatives, yet at most half of the crops are centred on them
    assert 160 <= on_positive <= 240


def test_crops_reach_the_network_in_the_presets_window():
    from lesion_harvester.geometry.preprocess import normalize_hu, stored_to_hu

    window = (-160.0, 240.0)
    record = SliceRecord("v", 2, np.array([[30.0, 10.0, 49.0, 19.0]]), np.zeros((0, 4)))
    sampler = CropSampler(TrainingData(["v"], [record]), {"v": _volume()}, 9, PreprocessConfig(window_hu=window),
                          LPGTrainConfig(crop_px=32, scale_jitter=(1.0, 1.0), background_fraction=0.0),
                          np.random.default_rng(0))
    x, _ = sampler.batch(2, centernet)
    stored = np.array([-50.0, 100.0])  # the volume's two values, in the stored encoding
    expected = normalize_hu(stored_to_hu(stored), window, 50.0)
    assert sorted(np.unique(x.numpy().round(3)).tolist()) == pytest.approx(sorted(expected.tolist()), abs=1e-3)


@pytest.mark.parametrize("where, expected", [("all", {"v", "w"}), ("fully_annotated", {"w"})])
def test_background_crops_come_from_the_chosen_volumes(where, expected):
    record = SliceRecord("w", 2, np.array([[30.0, 10.0, 49.0, 19.0]]), np.zeros((0, 4)))
    data = TrainingData(["v", "w"], [record], complete_keys=["w"])
    cfg = LPGTrainConfig(crop_px=16, background_fraction=1.0, scale_jitter=(1.0, 1.0), background_volumes=where)
    volumes = {"v": _volume(), "w": dataclasses.replace(_volume(), key="w")}
    sampler = CropSampler(data, volumes, 9, PreprocessConfig(), cfg,
                          np.random.default_rng(2))
    drawn = {picked[0].key for picked in (sampler._background() for _ in range(60)) if picked is not None}
    assert drawn == expected


def test_unknown_background_volumes_is_a_config_error():
    from lesion_harvester.errors import ConfigError

    with pytest.raises(ConfigError, match="background_volumes"):
        _sampler(background_volumes="some")


@pytest.mark.parametrize("value", [0.0, 1.0, -0.2])
def test_soft_negative_threshold_outside_0_1_is_a_config_error(value):
    from lesion_harvester.errors import ConfigError

    with pytest.raises(ConfigError, match="soft_negative_above"):
        _sampler(soft_negative_above=value)


def test_crops_say_whether_their_volume_is_fully_annotated():
    record = SliceRecord("w", 2, np.array([[30.0, 10.0, 49.0, 19.0]]), np.zeros((0, 4)))
    data = TrainingData(["v", "w"], [record], complete_keys=["w"])
    cfg = LPGTrainConfig(crop_px=16, background_fraction=0.5, scale_jitter=(1.0, 1.0))
    volumes = {"v": _volume(), "w": dataclasses.replace(_volume(), key="w")}
    sampler = CropSampler(data, volumes, 9, PreprocessConfig(), cfg, np.random.default_rng(3))
    _, targets = sampler.batch(12, centernet)
    assert targets["complete"].shape == (12,)
    assert set(targets["complete"].tolist()) == {0.0, 1.0}  # background crops of v, crops of w
