"""The `review` and `export` commands: start-up URL with its token, one-line errors."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

from lesion_harvester.cli.main import main
from lesion_harvester.io.annotations import read_slice_boxes
from tests.review.test_browser import _free_port


def test_review_prints_a_url_whose_token_is_needed(tiny_harvest_run, tiny_dataset):
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "lesion_harvester.cli.main", "review", str(tiny_harvest_run),
                               "--data", str(tiny_dataset), "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        line = server.stdout.readline()
        url = re.search(r"(http://127\.0\.0\.1:\d+/\?token=\S+)", line).group(1)
        deadline = time.monotonic() + 60
        while True:
            try:
                page = urllib.request.urlopen(url, timeout=5)
                break
            except urllib.error.URLError:
                assert time.monotonic() < deadline and server.poll() is None, server.stderr.read()
                time.sleep(0.2)
        assert page.status == 200 and b"slice-canvas" in page.read()
        try:
            urllib.request.urlopen(url.split("?")[0] + "api/session", timeout=5)
            raise AssertionError("a request without the token was answered")
        except urllib.error.HTTPError as exc:
            assert exc.code == 401
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def test_review_and_export_refuse_a_folder_without_a_harvest(tmp_path, capsys):
    for argv in (["review", str(tmp_path)], ["export", str(tmp_path), "--reviewed", str(tmp_path / "out.pkl")]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and str(tmp_path) in err[0] and "ledger.sqlite" in err[0]
    assert not (tmp_path / "out.pkl").exists()


def test_export_writes_the_given_v_m_when_nothing_was_reviewed(tiny_harvest_run, tiny_dataset, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_harvest_run, run)
    out = tmp_path / "v_m.pkl"
    assert main(["export", str(run), "--reviewed", str(out), "--data", str(tiny_dataset), "--annot-suffix"]) == 0
    assert "0 reviewed" in capsys.readouterr().out
    labels = read_slice_boxes(out)
    from lesion_harvester.dataset.roles import resolve_partition

    assert labels == resolve_partition(tiny_dataset).fully_annotated
    assert (tmp_path / "v_m.csv").is_file()
