"""io/partial.py: the per-volume results of a resumable job."""

import numpy as np

from lesion_harvester.io.partial import PartialResults, file_digest
from lesion_harvester.structures import Tracklet


def test_finished_volumes_come_back_only_to_the_same_job(tmp_path):
    t = Tracklet(np.array([3, 4]), np.array([[1.0, 2, 3, 4], [1.0, 2, 3, 5]]), np.array([0.5, 0.7]))
    job = PartialResults(tmp_path / "out.partial", "abc")
    job.save("v1", [t])
    job.save("v2", [])
    again = PartialResults(tmp_path / "out.partial", "abc").finished(["v1", "v2", "v3"])
    assert list(again) == ["v1", "v2"] and again["v2"] == []
    (back,) = again["v1"]
    assert np.array_equal(back.z_indices, t.z_indices) and np.allclose(back.scores, t.scores)
    # another job's folder (other settings): its results are not taken for ours
    assert PartialResults(tmp_path / "out.partial", "other").finished(["v1", "v2"]) == {}
    (tmp_path / "out.partial" / "fingerprint.json").write_text("{broken")
    assert PartialResults(tmp_path / "out.partial", "abc").finished(["v1"]) == {}
    job.remove()
    assert not (tmp_path / "out.partial").exists()


def test_file_digest_tells_files_apart(tmp_path):
    (tmp_path / "a").write_bytes(b"x" * 3_000_000)
    (tmp_path / "b").write_bytes(b"x" * 2_999_999 + b"y")
    assert file_digest(tmp_path / "a") != file_digest(tmp_path / "b")
    assert file_digest(tmp_path / "a") == file_digest(tmp_path / "a")
