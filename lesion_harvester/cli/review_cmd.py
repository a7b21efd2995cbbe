"""``lesion-harvester review RUN``: serve a harvest run to reviewers in the browser."""

from __future__ import annotations

import ipaddress
import logging

from lesion_harvester.cli.common import add_subcommand

log = logging.getLogger(__name__)


def add_parser(sub) -> None:
    p = add_subcommand(
        sub, "review", "review a harvest in the browser: annotate volumes fully, verify harvested lesions",
        "Serves a web app over the run folder: a work list (volumes to annotate fully; every round's\n"
        "harvested lesions and hard negatives to verify, none of the holdout), a slice viewer with the\n"
        "marks, proposals (what the harvest set aside hidden below a score filter), harvested lesions\n"
        "and hard negatives, and actions (accept, reject, adjust a box, draw a RECIST mark or a box,\n"
        "mark a volume fully annotated, undo). Every verdict is kept in the run's ledger with reviewer\n"
        "and time; the next 'harvest' round uses them. Open the printed URL: its token is needed on\n"
        "every request.\n"
        "HTTP API: docs/review-api.md.",
        ["lesion-harvester review runs/harvest",
         "lesion-harvester review runs/harvest --port 9000   # then: ssh -L 9000:127.0.0.1:9000 HOST"])
    p.add_argument("run", help="harvest run folder (harvest --out)")
    p.add_argument("--data", help="the dataset (default: the one the harvest recorded)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only; reach it from elsewhere with ssh -L)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765)")
    p.set_defaults(handler=run)


def run(args) -> int:
    import uvicorn

    from lesion_harvester.review.app import create_app

    app = create_app(args.run, args.data)
    host = args.host
    if not ipaddress.ip_address(host if host != "localhost" else "127.0.0.1").is_loopback:
        log.warning("binding %s: anyone who can reach this address and has the token can read and write the "
                    "run's verdicts", host)
    shown = f"[{host}]" if ":" in host else host
    print(f"reviewing {args.run}: open http://{shown}:{args.port}/?token={app.state.token}", flush=True)
    uvicorn.run(app, host=host, port=args.port, log_level="warning")
    return 0
