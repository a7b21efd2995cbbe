"""A run's log file holds its INFO records however logging was (not) set up."""

import logging

from lesion_harvester.io.logs import log_to_file


def test_a_run_log_holds_info_records_where_nothing_set_logging_up(tmp_path):
    root = logging.getLogger()
    saved = root.level
    root.setLevel(logging.WARNING)  # Python's default, as in a script or a notebook that calls the API
    try:
        with log_to_file(tmp_path / "run.log", ["lesion-harvester", "train-lpg"]):
            logging.getLogger("lesion_harvester.lpg.train").info("epoch 1: loss 1.0")
        assert root.level == logging.WARNING  # given back after the block
        logging.getLogger("lesion_harvester.lpg.train").info("after the block")
    finally:
        root.setLevel(saved)
    text = (tmp_path / "run.log").read_text()
    assert "command: lesion-harvester train-lpg" in text and "epoch 1: loss 1.0" in text
    assert "after the block" not in text
