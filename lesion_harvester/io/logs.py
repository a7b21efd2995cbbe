"""A run's log file: the log records of a command, appended to a file in its output folder."""

from __future__ import annotations

import contextlib
import logging
import shlex
from collections.abc import Iterator, Sequence
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
PACKAGE_LOGGER = "lesion_harvester"


def debug_of_this_package_only(verbose: bool) -> None:
    """Let DEBUG records through (``verbose``) from this package's loggers alone, the root logger passing
    INFO: a library's debug output (matplotlib's 200-odd font look-ups per figure) stays off under -v."""
    logging.getLogger(PACKAGE_LOGGER).setLevel(logging.DEBUG if verbose else logging.NOTSET)


@contextlib.contextmanager
def log_to_file(path: str | Path, command: Sequence[str] = (), level: int = logging.INFO) -> Iterator[Path]:
    """Append this process's log records (``level`` and up) to ``path`` while the block runs,
    starting with the ``command`` line if given. Appending keeps the story of a resumed run. The root
    logger passes ``level`` while the block runs, also where no command set logging up (the Python
    API, a benchmark script): Python's default would drop everything under WARNING."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.setLevel(level)
    root = logging.getLogger()
    root_level = root.level
    if root.getEffectiveLevel() > level:
        root.setLevel(level)
    root.addHandler(handler)
    try:
        if command:
            logging.getLogger(__name__).info("command: %s", shlex.join(command))
        yield path
    except BaseException as exc:
        logging.getLogger(__name__).error("stopped: %s: %s", type(exc).__name__, exc)
        raise
    finally:
        root.removeHandler(handler)
        root.setLevel(root_level)
        handler.close()
