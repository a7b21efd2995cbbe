"""Distributed: how a rank's share of the work is chosen (no process group needed)."""

import pytest

from lesion_harvester.distributed import ALONE, Distributed, join
from lesion_harvester.errors import ConfigError


def test_shards_cover_every_item_once_and_batches_split_evenly():
    items = [f"v{i}" for i in range(11)]
    shards = [Distributed(r, 3).shard(items) for r in range(3)]
    assert sorted(sum(shards, [])) == sorted(items) and all(shards)
    assert [Distributed(r, 4).batch_share(8) for r in range(4)] == [(0, 2), (2, 4), (4, 6), (6, 8)]
    with pytest.raises(ConfigError, match="multiple of 3"):
        Distributed(0, 3).batch_share(16)


def test_alone_is_rank_zero_of_one_and_needs_no_process_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert join("cpu") == ALONE and ALONE.is_main and not ALONE.active
    assert ALONE.shard([1, 2]) == [1, 2] and ALONE.gather("x") == ["x"]
    ALONE.barrier()  # a no-op
    assert Distributed(1, 2, local_rank=1).device("cuda") == "cuda:1"
    assert Distributed(1, 2, local_rank=1).device("cpu") == "cpu" and ALONE.device("cuda") == "cuda"
