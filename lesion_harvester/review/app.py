"""The reviewer's web app: HTTP routes over :class:`~lesion_harvester.review.service.ReviewService`.

Every request needs the session token (docs/review-api.md): the ``Authorization: Bearer`` header,
the ``token`` query parameter or the cookie the server sets when the page is opened with a valid
token. The front end is three static files in ``review/static`` (no build step).
"""

from __future__ import annotations

import re
import secrets
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict

from lesion_harvester.harvest.ledger import VerdictConflict
from lesion_harvester.review.service import ReviewError, ReviewService

STATIC_DIR = Path(__file__).parent / "static"
STATIC_FILES = {"app.js": "text/javascript", "style.css": "text/css"}  # nothing else is served
COOKIE = "lh_review_token"
MAX_BODY_BYTES = 64 * 1024  # a verdict is a few hundred bytes
SLICE_NAME = re.compile(r"([0-9]{1,6})\.png")  # ASCII digits: str.isdigit() also takes '²', which int() refuses


class VerdictBody(BaseModel):
    """A verdict as posted (validated in depth by the service). Strict: "5" is no number, true no
    slice; unknown fields are refused, so a misspelt one is not silently dropped."""

    model_config = ConfigDict(strict=True, extra="forbid")

    volume: str
    kind: str
    ref: str = ""
    action: str
    base: int = 0
    reviewer: str
    z_index: int | None = None
    box_xyxy_px: list[float] | None = None
    recist: dict[str, list[float]] | None = None
    distinct_from: list[str] = []


class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` is answered 413 without being read further
    (by its Content-Length, or as its chunks arrive); a smaller one is read and handed on whole."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > self.max_bytes:
            return await self._refuse(scope, receive, send)
        chunks, size, message = [], 0, {"more_body": True}
        while message.get("more_body"):
            message = await receive()
            if message["type"] != "http.request":  # the client left
                return None
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return await self._refuse(scope, receive, send)
        body, handed = b"".join(chunks), False

        async def replay():
            nonlocal handed
            if handed:
                return await receive()
            handed = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)

    async def _refuse(self, scope, receive, send):
        answer = JSONResponse({"detail": f"a request body is at most {self.max_bytes} bytes"}, status_code=413,
                              headers={"Connection": "close"})
        await answer(scope, receive, send)


def _conflict_detail(current: dict | None) -> str:
    """Who changed the target since the client read it, and that the client's verdict was not saved."""
    if current is None:
        return "not saved: the target has no verdict, so your base names none; look again"
    target = f"{current['kind']} {current['ref']}" if current["ref"] else "the volume"
    return (f"not saved: {current['reviewer']} gave '{current['action']}' on {current['volume']} {target} at "
            f"{current['at']} (verdict #{current['id']}), after the state your verdict was based on; look again")


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
    app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)

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
        return JSONResponse({"detail": exc.detail, **exc.extra}, status_code=exc.status)

    @app.exception_handler(VerdictConflict)
    async def conflict(_request: Request, exc: VerdictConflict):
        return JSONResponse({"detail": _conflict_detail(exc.current), "current": exc.current}, status_code=409)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError):
        # one line, 400 as for every other refused write (docs/review-api.md), not FastAPI's 422 list
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"] if part != "body") or "body"
        return JSONResponse({"detail": f"{where}: {error['msg']}"}, status_code=400)

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
        z_name = SLICE_NAME.fullmatch(name)
        if z_name is None:
            raise ReviewError(400, f"a slice is Z.png (Z: 0-based, ASCII digits), not {name[:40]!r}")
        png = service.slice_png(key, int(z_name.group(1)), level, width)
        return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/api/verdicts")
    def verdicts(volume: str):
        return {"verdicts": service.trail(volume)}

    @app.post("/api/verdicts")
    def add_verdict(body: VerdictBody):
        return {"verdict": service.submit(body.model_dump())}

    return app
