"""The paper's Table III for a finished harvest: detectors trained on its label sets, on held-out volumes.

    python benchmarks/table3.py RUN [--seeds 0,1] [--rows all | MSCN:R,RetinaNet:R+P,...]
        [--preset PRESET] [--set SECTION.KEY=VALUE ...] [--split detection_test] [--device cpu] [--json OUT]

RUN is a harvest's --out folder of a synthetic dataset (the data and V_M's labels are the ones the
harvest was given). Rows: MSCN (9 slices) and CenterNet (3 slices) on R, R+P and R+P+N; MONAI's
RetinaNet on R and R+P (lesion_harvester/peers/table3.py). On request only: ``--rows oracle``, the
MSCN and CenterNet on R+O (every lesion of the training volumes: the ceiling of what complete labels
add), Rpaper (R without hard-background mining), R+N and R+Nclean; and the cleaned label sets
R+Pclean and R+Pclean+Nclean (the harvest's mistakes taken out by the complete labels), e.g.
``--rows MSCN:R+Pclean,MSCN:R+Pclean+Nclean``: what the wrong labels cost a detector. Each (row,
training seed) trains into RUN/table3/, scans the split and is scored with the P3D evaluation
against ground_truth/complete.pkl; rows already scored are reused, so a killed table continues
(those scored with other settings, e.g. another --set, stop the table with an error instead).
Writes RUN/table3.json, RUN/table3.md and RUN/table3_froc.png, every row scored for the seeds, not only those asked for
this time (the harvest's report then includes them: lesion-harvester report RUN). The preset
defaults to the harvest's own (RUN/config.yaml).
"""

from __future__ import annotations

import sys
from pathlib import Path

from lesion_harvester.config import load_preset
from lesion_harvester.device import resolve_device
from lesion_harvester.errors import ConfigError
from lesion_harvester.paths import RunLayout
from lesion_harvester.peers.table3 import parse_rows, run_table3

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py, also when loaded by path
import common


@common.guarded
def main(argv: list[str] | None = None) -> int:
    parser = common.parser(__doc__)
    parser.add_argument("run")
    parser.add_argument("--seeds", default="0", help="training seeds, comma-separated (default 0)")
    parser.add_argument("--rows", default="all", help="rows as DETECTOR:LABELS, comma-separated (default all)")
    parser.add_argument("--preset", default=None, help="preset name or YAML (default: RUN/config.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="change one setting of the preset (repeatable)")
    parser.add_argument("--split", default="detection_test")
    parser.add_argument("--device", default="auto")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    try:
        rows = parse_rows(args.rows)
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError as exc:
        raise ConfigError(f"--rows/--seeds: {exc}") from None
    preset = load_preset(args.preset or RunLayout(Path(args.run)).config, args.set)
    table = run_table3(args.run, preset, seeds, rows, args.split, resolve_device(args.device), not args.quiet)
    lines = [f"{r['detector']} on {r['labels']}: AP {r['ap']['mean']:.3f}, {r['froc']['4']['mean']:.3f} at 4 FP/volume "
             f"({len(seeds)} seeds)" for r in table["rows"]]
    common.report(table, args.json, *lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
