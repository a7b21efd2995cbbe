"""A fuzz pass (hypothesis) over the two inputs users most often make by hand: DL_info.csv rows and
annotation pickles. Whatever the content, reading either gives a result or one DataError naming
the file, never another exception."""

from __future__ import annotations

import csv
import pickle
import string
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from lesion_harvester.errors import DataError  # noqa: E402
from lesion_harvester.io.annotations import read_any_boxes  # noqa: E402
from lesion_harvester.io.deeplesion import read_dl_info  # noqa: E402
from tests.conftest import shared_path  # noqa: E402

FUZZ = settings(max_examples=150, deadline=None, derandomize=True,  # repeatable in CI
                suppress_health_check=[HealthCheck.function_scoped_fixture])

# cells: numbers, number lists as DL_info writes them, and junk
_number = st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True))
_cell = st.one_of(
    _number.map(str),
    st.lists(_number, min_size=0, max_size=9).map(lambda xs: ", ".join(map(str, xs))),
    st.text(alphabet=string.printable, max_size=20),
)


@FUZZ
@given(column=st.integers(0, 17), value=_cell)
def test_a_mutated_dl_info_row_is_read_or_refused_in_one_line(tmp_path_factory, column, value):
    source = shared_path("deeplesion", "DL_info_excerpt_158rows.csv")
    with open(source, newline="") as handle:
        rows = list(csv.reader(handle))
    rows[1][column] = value
    path = tmp_path_factory.mktemp("dl") / "DL_info.csv"
    with open(path, "w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    try:
        read_dl_info(path)
    except DataError as exc:
        assert str(path) in str(exc) and "\n" not in str(exc)


_scalar = st.one_of(st.none(), st.booleans(), _number, st.text(max_size=5))
_box = st.lists(_number, min_size=0, max_size=7)
_pair = st.tuples(st.one_of(st.integers(-3, 50), st.text(max_size=3), st.floats()), _box)
_value = st.one_of(
    _scalar,
    st.lists(_box, max_size=3),  # 3D boxes
    st.lists(st.lists(_pair, max_size=3), max_size=3),  # tracklets
    st.dictionaries(st.one_of(st.integers(-2, 40), st.text(max_size=3)), st.lists(_box, max_size=3), max_size=3),
)
_annotations = st.one_of(
    st.dictionaries(st.text(alphabet=string.ascii_letters + "_-.0123456789", max_size=24), _value, max_size=4),
    st.lists(_value, max_size=3),
    _scalar,
)


@FUZZ
@given(content=_annotations)
def test_an_annotation_pickle_of_any_shape_is_read_or_refused_in_one_line(tmp_path_factory, content):
    path: Path = tmp_path_factory.mktemp("pkl") / "boxes.pkl"
    path.write_bytes(pickle.dumps(content))
    try:
        read_any_boxes(path)
    except DataError as exc:
        assert str(path) in str(exc) and "\n" not in str(exc)
