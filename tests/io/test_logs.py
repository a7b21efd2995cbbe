"""A run's log file holds its INFO records however logging was (not) set up; -v shows this package's
debug records, not those of the libraries it uses."""

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


def test_verbose_shows_our_debug_records_and_no_library_s(capsys):
    from lesion_harvester.cli.common import configure_logging

    try:
        configure_logging(verbose=True, quiet=False)
        logging.getLogger("matplotlib.font_manager").debug("findfont: Matching sans-serif")  # ~220 per figure
        logging.getLogger("PIL.PngImagePlugin").debug("STREAM b'IHDR'")
        logging.getLogger("lesion_harvester.detect.run").debug("ours")
        logging.getLogger("matplotlib").warning("a library's warning")
        err = capsys.readouterr().err
        assert "ours" in err and "a library's warning" in err
        assert "findfont" not in err and "STREAM" not in err
        configure_logging(verbose=False, quiet=False)
        logging.getLogger("lesion_harvester.detect.run").debug("ours again")
        assert "ours again" not in capsys.readouterr().err
    finally:
        configure_logging(verbose=False, quiet=False)
