import json

import pytest

from lesion_harvester.cli.main import main
from tests.conftest import shared_path


def test_inspect_real_files(capsys):
    for path, fmt, shape in [
        (shared_path("real_ct", "totalsegmentator", "example_ct.nii.gz"), "nifti", [112, 101, 122]),
        (shared_path("real_ct", "totalsegmentator", "example_ct_dicom"), "dicom", [20, 512, 512]),
        (shared_path("real_ct", "pydicom", "CT_small.dcm"), "dicom", [1, 128, 128]),
    ]:
        assert main(["inspect", str(path)]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["format"] == fmt and out["volumes"][0]["shape"] == shape
        assert set(out["volumes"][0]) == {"id", "shape", "spacing_mm", "hu_min", "hu_max", "input_shape_ijk",
                                          "world_frame", "world_origin_known", "array_xyz_to_world_mm",
                                          "missing_slices", "orientation"} | ({"dicom"} if fmt == "dicom" else set())
        assert out["volumes"][0]["missing_slices"] == 0
        assert out["volumes"][0]["world_frame"] == ("RAS" if fmt == "nifti" else "LPS")
        # NIfTI's axes run toward the patient's right, anterior, superior here; DICOM's left, posterior, superior
        assert out["volumes"][0]["orientation"]["input_axes_ijk"] == ("RAS" if fmt == "nifti" else "LPS")
        assert out["volumes"][0]["orientation"]["slice_plane"] == "axial"


def test_inspect_names_a_flipped_and_tilted_orientation(tmp_path, capsys):
    import nibabel as nib
    import numpy as np

    tilt = np.radians(12.0)
    affine = np.diag([-0.8, 0.8, 2.5, 1.0])  # i toward the patient's left (-x in RAS)
    rotation = np.array([[1, 0, 0], [0, np.cos(tilt), -np.sin(tilt)], [0, np.sin(tilt), np.cos(tilt)]])
    affine[:3, :3] = rotation @ affine[:3, :3]  # a gantry tilted 12 degrees about x
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4), np.int16), affine), tmp_path / "tilted.nii.gz")
    assert main(["inspect", str(tmp_path / "tilted.nii.gz")]) == 0
    (volume,) = json.loads(capsys.readouterr().out)["volumes"]
    assert volume["orientation"]["input_axes_ijk"] == "LAS" and volume["orientation"]["slice_plane"] == "axial"
    assert volume["orientation"]["oblique_deg"] == pytest.approx(12.0, abs=1e-3)


def test_inspect_synthetic_split(tiny_dataset, capsys):
    assert main(["inspect", str(tiny_dataset), "--split", "detection_test"]) == 0
    out = json.loads(capsys.readouterr().out)
    splits = json.loads((tiny_dataset / "splits.json").read_text())
    assert out["format"] == "deeplesion"
    assert [v["id"] for v in out["volumes"]] == splits["detection_test"]


def test_evaluate_writes_json_and_plots(tiny_dataset, tmp_path, capsys):
    marks = tmp_path / "marks.pkl"
    assert main(["marks", str(tiny_dataset), "--out", str(marks)]) == 0
    out_json = tmp_path / "r.json"
    code = main(
        [
            "evaluate",
            "--gt",
            str(tiny_dataset / "ground_truth" / "complete.pkl"),
            "--detections",
            str(marks),
            "--json",
            str(out_json),
            "--plot",
            str(tmp_path / "plots"),
        ]
    )
    assert code == 0
    result = json.loads(out_json.read_text())
    assert set(result) >= {"ap", "froc", "recall_at_precision", "n_gt", "n_volumes", "n_detections"}
    assert list(result["froc"]) == ["0.125", "0.25", "0.5", "1", "2", "4", "8", "16"]
    assert list(result["recall_at_precision"]) == ["0.8", "0.85", "0.9", "0.95"]
    # the marks are exact ground-truth boxes: precision 1, recall = the marked fraction
    stats = json.loads((tiny_dataset / "stats.json").read_text())
    assert result["final_precision"] == 1.0
    assert result["final_recall"] == pytest.approx(stats["marked_fraction"], abs=1e-3)
    assert (tmp_path / "plots" / "froc.png").is_file() and (tmp_path / "plots" / "pr.png").is_file()
    assert "AP" in capsys.readouterr().out


def test_evaluate_one_split(tiny_dataset, tmp_path, capsys):
    marks = tmp_path / "marks.pkl"
    assert main(["marks", str(tiny_dataset), "--out", str(marks)]) == 0
    gt = str(tiny_dataset / "ground_truth" / "complete.pkl")
    out_json = tmp_path / "r.json"
    assert main(["evaluate", "--gt", gt, "--detections", str(marks), "--split", "detection_test",
                 "--json", str(out_json)]) == 0
    stats = json.loads((tiny_dataset / "stats.json").read_text())["splits"]["detection_test"]
    result = json.loads(out_json.read_text())
    # only that split's lesions and volumes count, and only its marks are true positives
    assert result["n_volumes"] == stats["volumes"] and result["n_gt"] == stats["lesions"]
    assert result["final_recall"] == pytest.approx(stats["marked"] / stats["lesions"], abs=1e-3)
    assert main(["evaluate", "--gt", gt, "--detections", str(marks), "--split", "nope"]) == 2
    assert "no split 'nope'" in capsys.readouterr().err


def test_user_error_is_one_line_exit_2(tmp_path, capsys):
    assert main(["evaluate", "--gt", str(tmp_path / "missing.pkl"), "--detections", str(tmp_path / "d.pkl")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing.pkl: file not found" in err[0]


def test_synth_command(tmp_path, capsys):
    assert main(["synth", str(tmp_path / "s"), "--preset", "tiny", "--volumes", "4", "--seed", "9"]) == 0
    assert json.loads((tmp_path / "s" / "stats.json").read_text())["volumes"] == 4


def test_demo_marks_only(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--preset", "tiny", "--marks-only"]) == 0
    printed = capsys.readouterr().out
    assert "original RECIST marks of harvest_test" in printed and "original RECIST marks of detection_test" in printed
    assert (out / "data" / "DL_info.csv").is_file() and (out / "marks_harvest_test.pkl").is_file()
    assert not (out / "harvest").exists()


@pytest.mark.slow
def test_demo_harvests_and_prints_table_one(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--preset", "tiny", "--rounds", "1", "--quiet",
                 "--set", "lpc.epochs=2"]) == 0
    captured = capsys.readouterr()
    assert "Table I" in captured.out and "R + P_H,1 (LPG only)" in captured.out
    assert "%|" not in captured.err and "round 1: lpg" not in captured.err  # quiet: no bars, no info lines
    report = json.loads((out / "harvest" / "report.json").read_text())
    assert [r["round"] for r in report["rounds"]] == [1]
    assert (out / "harvest" / "harvested.pkl").is_file() and (out / "harvest" / "report.md").is_file()
    assert "lpc:\n" in (out / "harvest" / "config.yaml").read_text()
    assert "epochs: 2" in (out / "harvest" / "config.yaml").read_text().split("lpc:")[1]  # --set took effect
    # the run's log files hold what the terminal did not show
    log = (out / "harvest" / "harvest.log").read_text()
    assert "harvesting" in log and "round 1: lpg" in log and "round 1: mine" in log and "epoch 1: loss" in log
    assert "epoch 1: loss" in (out / "harvest" / "round_1" / "lpg" / "train.log").read_text()
    assert "command: lesion-harvester demo" in (out / "demo.log").read_text()


def test_every_subcommand_explains_itself():
    from lesion_harvester.cli.main import SUBCOMMANDS, build_parser

    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command").choices
    assert set(subparsers) == set(SUBCOMMANDS)
    for name, sub in subparsers.items():
        assert sub.description and "examples:\n  lesion-harvester" in sub.epilog, name
        for action in sub._actions:
            assert action.help, f"{name} {action.option_strings or action.dest} has no help text"
        devices = [a for a in sub._actions if "--device" in a.option_strings]
        assert all(a.default == "auto" for a in devices), name


def test_bad_settings_end_in_one_line_before_any_work(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train-lpg", str(tmp_path), "--out", str(out), "--set", "lpg_train.optimizer=sdg"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "lpg_train.optimizer" in err[0] and "'sgd', 'adamw'" in err[0]
    assert main(["harvest", str(tmp_path), "--out", str(out), "--rounds", "0"]) == 2
    assert "--rounds must be at least 1" in capsys.readouterr().err
    assert main(["propose", str(tmp_path), "--checkpoint", "x.pt", "--out", "d.pkl", "--device", "tpu"]) == 2
    assert "--device tpu: unknown device" in capsys.readouterr().err
    assert not out.exists()


def test_a_reader_that_goes_away_is_not_a_traceback():
    """`lesion-harvester ... | head`: the closed pipe ends the command quietly (exit 141, as the shell's SIGPIPE)."""
    import subprocess
    import sys

    code = ("import sys\nfrom lesion_harvester.cli import info_cmd, main\n"
            "def closed(args):\n    raise BrokenPipeError(32, 'Broken pipe')\n"
            "info_cmd.run = closed\nsys.exit(main.main(['info', 'x.pt']))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 141 and "Traceback" not in done.stderr, done.stderr
