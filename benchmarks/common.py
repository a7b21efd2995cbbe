"""What the benchmark scripts share: their command line, their JSON output and their error handling.

Every script in this folder has the same shape::

    sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py, also when loaded by path
    import common

    @common.guarded
    def main(argv: list[str] | None = None) -> int:
        parser = common.parser(__doc__)  # its description and usage from the docstring, and --json OUT
        ...
        args = parser.parse_args(argv)
        ...
        common.report(results, args.json, "the line to quote in RESULTS.md")
        return 0

    if __name__ == "__main__":
        sys.exit(main())
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from lesion_harvester.errors import LesionHarvesterError
from lesion_harvester.storage.atomic import atomic_write_text

QUOTE = "> "  # the prefix of the lines to quote: `python benchmarks/X.py ... | grep '^> '`


def parser(doc: str) -> argparse.ArgumentParser:
    """A parser described by a script's docstring (first line; the rest, verbatim, after the options)
    with the common option ``--json OUT``."""
    description, _, rest = doc.strip().partition("\n")
    p = argparse.ArgumentParser(description=description, epilog=rest.strip("\n") or None,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", metavar="OUT", default=None, help="also write the results here")
    return p


def plain(value):
    """``value`` with numpy scalars and arrays as Python numbers and lists, and NaN and +-inf as None,
    so that it is standard JSON."""
    if isinstance(value, dict):
        return {plain(k): plain(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return plain(value.tolist())
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def report(results: dict | list, json_path: str | Path | None, *lines: str) -> None:
    """Print ``results`` as JSON, write the same JSON to ``json_path`` (atomically) when given, then
    print each of ``lines``, the figures to quote, after :data:`QUOTE`."""
    text = json.dumps(plain(results), indent=1, allow_nan=False)
    print(text)
    if json_path:
        atomic_write_text(json_path, text + "\n")
    for line in lines:
        print(f"{QUOTE}{line}")


def guarded(main: Callable[..., int]) -> Callable[..., int]:
    """``main`` printing a user error (:class:`LesionHarvesterError`) as one line on stderr and
    returning 2 instead of raising it, as ``lesion-harvester`` does."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> int:
        try:
            return main(*args, **kwargs)
        except LesionHarvesterError as exc:
            print(f"{Path(main.__code__.co_filename).name}: error: {exc}", file=sys.stderr)
            return 2

    return wrapper
