"""One DDP training step on two CPU processes (gloo), against one process on the whole batch."""

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lesion_harvester.config import LPGTrainConfig, load_preset
from lesion_harvester.distributed import Distributed
from lesion_harvester.lpg.data import CropSampler, SliceRecord, TrainingData, epoch_loader
from lesion_harvester.lpg.ddp import distributed_model
from lesion_harvester.lpg.model import MSCN
from lesion_harvester.preprocessing import PreparedVolume

BATCH = 4


def _sampler() -> CropSampler:
    rng = np.random.default_rng(0)
    image = rng.normal(0, 30, (7, 64, 64)).astype(np.float16)
    image[:, 20:34, 24:40] += 150  # a lesion on every slice
    volume = PreparedVolume("v", image, (0, 0), 1.0, (2.0, 1.0, 1.0), (7, 64, 64))
    record = SliceRecord("v", 3, np.array([[24.0, 20.0, 39.0, 33.0]]), np.zeros((0, 4)))
    cfg = LPGTrainConfig(crop_px=32, scale_jitter=(0.8, 1.25), background_fraction=0.5, hflip=True)
    return CropSampler(TrainingData(["v"], [record]), {"v": volume}, 9, load_preset("tiny").preprocess, cfg)


def _step(ranks: Distributed) -> dict:
    """One AdamW step of the tiny MSCN on this rank's share of one batch; its weights afterwards."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = MSCN(load_preset("tiny").lpg)
    net = distributed_model(model, "cpu") if ranks.active else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    cfg = _sampler().crop
    x, targets = next(epoch_loader(_sampler, lambda crops: model.build_targets(crops, cfg), 0, 0, 1, BATCH, 0,
                                   ranks.batch_share(BATCH)))
    totals = ranks.all_sum(model.loss_totals(targets)) if ranks.active else None
    loss, _ = model.loss(net(x), targets, cfg, totals)
    (loss * ranks.world_size).backward()
    optimizer.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _rank(rank: int, store: str, results) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    results[rank] = _step(Distributed(rank, 2))
    dist.destroy_process_group()


def test_a_ddp_step_is_the_one_process_step_on_the_combined_batch(tmp_path):
    alone = _step(Distributed())
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_rank, args=(str(tmp_path / "store"), results), nprocs=2)
        first, second = results[0], results[1]
    for key, value in alone.items():
        assert torch.equal(first[key], second[key]), key  # the ranks hold the same model
        assert torch.allclose(first[key].float(), value.float(), rtol=1e-5, atol=1e-5), key
    # the step did change the weights: batch norm statistics and parameters moved
    fresh = MSCN(load_preset("tiny").lpg).state_dict()
    assert not torch.equal(fresh["stem.1.running_mean"], alone["stem.1.running_mean"])
