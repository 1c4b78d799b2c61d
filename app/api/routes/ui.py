"""The dashboard: GET /ui serves app/ui/index.html and /ui/static/* its scripts, styles and the vendored chart
library. The page itself is public (no Bearer header); its data calls carry the key the user enters. Kept out of
the OpenAPI document, and served under a strict Content-Security-Policy (no inline script or style, same origin)."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, Response
from starlette.staticfiles import StaticFiles

UI_DIR = Path(str(files("app.ui")))
STATIC_DIR = UI_DIR / "static"

# Everything from our own origin only; no inline code, no framing, no plugins.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    # The page is tiny and must pick up a new release at once; scripts are revalidated by their ETag.
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)
_static = StaticFiles(directory=STATIC_DIR)


@router.api_route("/ui", methods=["GET", "HEAD"], response_class=FileResponse)
@router.api_route("/ui/", methods=["GET", "HEAD"], response_class=FileResponse)
def index() -> FileResponse:
    return FileResponse(UI_DIR / "index.html", media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)


@router.api_route("/ui/static/{path:path}", methods=["GET", "HEAD"])
async def static(path: str, request: Request) -> Response:
    """StaticFiles does the work (content types, ETag/If-None-Match, refusing paths outside the directory); a
    missing file is a 404 problem like any other."""
    response = await _static.get_response(path, request.scope)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Cache-Control"] = "no-cache"
    return response
