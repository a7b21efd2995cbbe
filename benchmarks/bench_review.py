"""The reviewer's slice endpoint: latency per windowed slice over real HTTP, as a browser scrolls.

    python benchmarks/bench_review.py DATA [--run RUN] [--requests 200] [--volumes 2] [--json OUT]

DATA is a DeepLesion-layout folder (the bench synthetic data has 512 x 512 slices); RUN a harvest
run folder of it. Without --run, a run folder holding only the ledger's list of DATA's volumes is
made in a temporary folder (the slice endpoint reads nothing else).

The server (`lesion-harvester review`'s app under uvicorn, the token in a header) runs in this
process; one keep-alive HTTP connection requests --requests slices: the slices of the first
--volumes volumes with the most slices, in order, as a reviewer scrolling through each, then again
from the first (the window changed, so nothing comes from the slice cache). Reported: the median and
95th percentile of each request's latency, the first request of each volume apart (it reads the
volume's PNGs), and the bytes per slice.
"""

from __future__ import annotations

import http.client
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from lesion_harvester.harvest.ledger import Ledger  # noqa: E402
from lesion_harvester.io.deeplesion import DeepLesionDataset  # noqa: E402

TOKEN = "bench-token"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(run: Path, data: Path):
    import uvicorn

    from lesion_harvester.review.app import create_app

    server = uvicorn.Server(uvicorn.Config(create_app(run, data, token=TOKEN), host="127.0.0.1", port=_free_port(),
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    return server, thread


@common.guarded
def main(argv: list[str] | None = None) -> int:
    parser = common.parser(__doc__)
    parser.add_argument("data", type=Path)
    parser.add_argument("--run", type=Path, default=None)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--volumes", type=int, default=2)
    args = parser.parse_args(argv)

    dataset = DeepLesionDataset(args.data)
    with tempfile.TemporaryDirectory() as tmp:
        run = args.run
        if run is None:
            run = Path(tmp) / "run"
            ledger = Ledger(run / "ledger.sqlite")
            ledger.set_meta("data", str(args.data.resolve()))
            ledger.set_volumes([], list(dataset.sub_volumes), [])
            ledger.close()
        keys = sorted(dataset.sub_volumes, key=lambda k: -len(dataset.sub_volumes[k].slice_numbers))[:args.volumes]
        plan = [(k, z) for k in keys for z in range(len(dataset.sub_volumes[k].slice_numbers))]
        server, thread = _serve(run, args.data)
        try:
            conn = http.client.HTTPConnection(server.config.host, server.config.port)
            latencies, first, sizes, shape = [], [], [], None
            for i in range(args.requests):
                key, z = plan[i % len(plan)]
                level = 40 + 10 * (i // len(plan))  # a new window on every pass: no cached slice
                started = time.perf_counter()
                conn.request("GET", f"/api/volumes/{key}/slices/{z}.png?level={level}&width=400",
                             headers={"Authorization": f"Bearer {TOKEN}"})
                answer = conn.getresponse()
                body = answer.read()
                elapsed = time.perf_counter() - started
                if answer.status != 200:
                    raise SystemExit(f"{key} slice {z}: HTTP {answer.status}: {body[:200]!r}")
                (first if i < len(plan) and z == 0 else latencies).append(elapsed)
                sizes.append(len(body))
                if shape is None:
                    from io import BytesIO

                    from PIL import Image

                    shape = Image.open(BytesIO(body)).size
        finally:
            server.should_exit = True
            thread.join(timeout=10)

    ms = np.array(latencies) * 1000
    results = {
        "requests": args.requests, "volumes": keys, "slices_per_volume": [len(dataset.sub_volumes[k].slice_numbers)
                                                                       for k in keys],
        "slice_px": list(shape), "median_ms": float(np.median(ms)), "p95_ms": float(np.percentile(ms, 95)),
        "max_ms": float(ms.max()), "first_of_volume_ms": [round(1000 * t, 1) for t in first],
        "mean_png_kb": float(np.mean(sizes) / 1024),
    }
    common.report(results, args.json,
                  f"slice endpoint, {shape[0]} x {shape[1]} px, {len(latencies)} requests over HTTP: median "
                  f"{results['median_ms']:.1f} ms, 95th percentile {results['p95_ms']:.1f} ms; the first slice of a "
                  f"volume (reading its {results['slices_per_volume'][0]} PNGs) "
                  f"{results['first_of_volume_ms'][0]:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
