"""Checkpoints describe themselves, and one that this version cannot read ends in a clear error."""

import nibabel as nib
import numpy as np
import torch

from lesion_harvester import __version__
from lesion_harvester.cli.main import main
from lesion_harvester.lpg.checkpoint import load_checkpoint, save_checkpoint


def test_an_lpg_checkpoint_records_versions_preset_and_training_data(tiny_dataset, tiny_checkpoint, capsys):
    payload = load_checkpoint(tiny_checkpoint)
    assert payload["written_with"]["lesion_harvester"] == __version__
    assert payload["written_with"]["torch"] == str(torch.__version__)  # a plain string: weights_only loads it
    assert payload["preset"] == "tiny" and payload["training_data"]["path"] == str(tiny_dataset.resolve())
    assert len(payload["training_data"]["dl_info_sha1"]) == 40
    assert main(["info", str(tiny_checkpoint)]) == 0
    printed = capsys.readouterr().out
    for text in ("format: lesion-harvester-lpg/1", f"lesion_harvester: {__version__}", "preprocess:",
                 "spacing_mm:", "preset: tiny", "dl_info_sha1:", "parameters:"):
        assert text in printed, text
    assert "optimizer" not in printed and "state_dict" not in printed


def test_checkpoints_this_version_cannot_read(tiny_checkpoint, tmp_path, capsys):
    payload = load_checkpoint(tiny_checkpoint)
    newer = {**payload, "format": "lesion-harvester-lpg/2", "written_with": {"lesion_harvester": "9.0.0"}}
    save_checkpoint(tmp_path / "newer.pt", newer)
    data = str(tmp_path / "scan")
    assert main(["detect", data, "--checkpoint", str(tmp_path / "newer.pt"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "newer.pt: LPG checkpoint of format lesion-harvester-lpg/2, written by lesion-harvester 9.0.0" in err
    # settings that do not match the weights (as a changed architecture would give): found once a scan needs
    # the model (a rerun with nothing to scan builds none), before anything is written
    state = dict(payload["state_dict"])
    state.pop(next(iter(state)))
    save_checkpoint(tmp_path / "broken.pt", {**payload, "state_dict": state})
    scan = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((16, 16, 4), np.int16), np.eye(4)), scan)
    assert main(["detect", str(scan), "--checkpoint", str(tmp_path / "broken.pt"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "broken.pt: the LPG checkpoint's weights do not fit" in err
    assert "Traceback" not in err and not (tmp_path / "o").exists()
