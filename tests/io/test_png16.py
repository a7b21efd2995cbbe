import numpy as np
import pytest
from PIL import Image

from lesion_harvester.errors import DataError
from lesion_harvester.io.png16 import read_png_hu, write_png_hu


def test_round_trip_keeps_16_bits(tmp_path):
    hu = np.array([[-1024, 0], [3071, -32768]], dtype=np.int16)
    write_png_hu(tmp_path / "a.png", hu)
    assert Image.open(tmp_path / "a.png").mode == "I;16"
    assert np.array_equal(read_png_hu(tmp_path / "a.png"), hu)


def test_eight_bit_png_is_refused(tmp_path):
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "b.png")
    with pytest.raises(DataError, match=r"b\.png: L PNG with 8-bit samples"):
        read_png_hu(tmp_path / "b.png")


def test_corrupt_and_missing_png(tmp_path):
    (tmp_path / "c.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(DataError, match=r"c\.png: corrupt or unreadable PNG"):
        read_png_hu(tmp_path / "c.png")
    with pytest.raises(DataError, match="slice file is missing"):
        read_png_hu(tmp_path / "nope.png")
