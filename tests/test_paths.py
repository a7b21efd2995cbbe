"""paths.py: the one place that names files and folders."""

from pathlib import Path

from lesion_harvester.paths import RunLayout, TrainLayout, partial_dir


def test_layouts_take_a_string_or_a_path():
    assert RunLayout("runs/h").lpc_fold(2, 1) == Path("runs/h/round_2/lpc/fold1.pt")
    assert RunLayout(Path("runs/h")).lpg(3).best == Path("runs/h/round_3/lpg/best.pt")
    assert TrainLayout("runs/lpg").log == Path("runs/lpg/train.log")
    assert partial_dir("out/dets.pkl") == Path("out/dets.pkl.partial")
