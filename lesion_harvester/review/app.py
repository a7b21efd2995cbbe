"""The reviewer's web app: HTTP routes over :class:`~lesion_harvester.review.service.ReviewService`.

Every request needs the session token (docs/review-api.md): the ``Authorization: Bearer`` header,
the ``token`` query parameter or the cookie the server sets when the page is opened with a valid
token. The front end is three static files in ``review/static`` (no build step).
"""

from __future__ import annotations

import secrets
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel

from lesion_harvester.harvest.ledger import VerdictConflict
from lesion_harvester.review.service import ReviewError, ReviewService

STATIC_DIR = Path(__file__).parent / "static"
STATIC_FILES = {"app.js": "text/javascript", "style.css": "text/css"}  # nothing else is served
COOKIE = "lh_review_token"


class VerdictBody(BaseModel):
    """A verdict as posted (validated in depth by the service)."""

    volume: str
    kind: str
    ref: str = ""
    action: str
    base: int = 0
    reviewer: str
    z_index: int | None = None
    box_xyxy_px: list[float] | None = None
    recist: dict[str, list[float]] | None = None


def _token_of(request: Request) -> str:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return request.query_params.get("token") or request.cookies.get(COOKIE) or ""


def create_app(run_dir: str | Path, data_dir: str | Path | None = None, token: str | None = None) -> FastAPI:
    """The app for one harvest run folder; ``token`` defaults to a random one (``app.state.token``)."""
    service = ReviewService(run_dir, data_dir)
    app = FastAPI(title="Lesion Harvester reviewer", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.token = token or secrets.token_urlsafe(24)
    app.state.service = service

    @app.middleware("http")
    async def require_token(request: Request, call_next):
        if not secrets.compare_digest(_token_of(request).encode(), app.state.token.encode()):
            return JSONResponse({"detail": "a valid token is needed: open the URL printed by 'lesion-harvester "
                                           "review' (…/?token=…)"}, status_code=401)
        response = await call_next(request)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"  # the token never leaves in a Referer
        return response

    @app.exception_handler(ReviewError)
    async def refused(_request: Request, exc: ReviewError):
        return JSONResponse({"detail": exc.detail}, status_code=exc.status)

    @app.exception_handler(VerdictConflict)
    async def conflict(_request: Request, exc: VerdictConflict):
        return JSONResponse({"detail": "someone else changed this first", "current": exc.current}, status_code=409)

    @app.get("/")
    def index(request: Request):
        response = FileResponse(STATIC_DIR / "index.html", media_type="text/html")
        if request.query_params.get("token"):
            response.set_cookie(COOKIE, app.state.token, httponly=True, samesite="strict")
        response.headers["Content-Security-Policy"] = (
            "default-src 'self'; img-src 'self' blob: data:; style-src 'self' 'unsafe-inline'; script-src 'self'")
        return response

    @app.get("/static/{name}")
    def static(name: str):
        if name not in STATIC_FILES:  # a fixed list: a name from the request never becomes a path
            raise ReviewError(404, f"no file {name[:80]!r}")
        return FileResponse(STATIC_DIR / name, media_type=STATIC_FILES[name])

    @app.get("/api/session")
    def session():
        return service.session()

    @app.get("/api/worklist")
    def worklist(order: str = "score"):
        return service.worklist(order)

    @app.get("/api/volumes/{key}")
    def volume(key: str):
        return service.volume_info(key)

    @app.get("/api/volumes/{key}/slices/{name}")
    def slice_png(key: str, name: str, level: float = 40.0, width: float = 400.0):
        z_text = name.removesuffix(".png")
        if not name.endswith(".png") or not z_text.isdigit():
            raise ReviewError(400, f"a slice is Z.png, not {name[:40]!r}")
        png = service.slice_png(key, int(z_text), level, width)
        return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/api/verdicts")
    def verdicts(volume: str):
        return {"verdicts": service.trail(volume)}

    @app.post("/api/verdicts")
    def add_verdict(body: VerdictBody):
        return {"verdict": service.submit(body.model_dump())}

    return app
