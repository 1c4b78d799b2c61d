"""The dashboard's routes in process (httpx ASGITransport): the page is public HTML under a strict CSP, with no
inline code and only same-origin assets; the static files are served with their content types and revalidate by
ETag; missing or escaping paths are 404 problems; the dashboard stays out of the OpenAPI document."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from app.api.routes.ui import STATIC_DIR, UI_DIR
from app.config import Settings
from app.main import create_app

pytestmark = pytest.mark.anyio

PROBLEM = "application/problem+json"
JS = ("text/javascript", "application/javascript")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def app(tmp_path: Path) -> FastAPI:
    # The dashboard's routes never touch the database, so an empty SQLite file is enough.
    return create_app(Settings(database_url=f"sqlite:///{tmp_path / 'ui.db'}"))


@pytest.fixture
async def anon(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """No Authorization header: the page and its files are public."""
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


class PageParser(HTMLParser):
    """Collects what matters for the CSP: scripts (with any inline body), stylesheets, style/handler attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[dict[str, str | None]] = []
        self.stylesheets: list[str] = []
        self.inline: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.inline += [f"<{tag} {name}>" for name in a if name == "style" or name.startswith("on")]
        if tag == "script":
            self.scripts.append(a)
            self._in_script = True
        elif tag == "style":
            self.inline.append("<style>")
        elif tag == "link" and a.get("rel") == "stylesheet":
            self.stylesheets.append(a.get("href") or "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline.append(f"<script>{data.strip()[:40]}")


@pytest.mark.parametrize("path", ["/ui", "/ui/"])
async def test_page_is_public_html_under_a_strict_content_security_policy(anon: httpx.AsyncClient, path: str):
    r = await anon.get(path)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/html")
    assert r.text == (UI_DIR / "index.html").read_text()
    csp = {
        part.split()[0]: part.split()[1:] for part in r.headers["content-security-policy"].split(";") if part.strip()
    }
    assert csp["default-src"] == ["'self'"]
    assert csp["script-src"] == ["'self'"]
    assert csp["style-src"] == ["'self'"]
    assert csp["object-src"] == ["'none'"]
    assert csp["frame-ancestors"] == ["'none'"]
    assert not any("unsafe" in source for sources in csp.values() for source in sources), csp
    assert r.headers["x-content-type-options"] == "nosniff"


async def test_page_has_no_inline_code_and_every_asset_it_loads_is_served(anon: httpx.AsyncClient):
    parser = PageParser()
    parser.feed((await anon.get("/ui")).text)
    assert parser.inline == []
    scripts = [s.get("src") or "" for s in parser.scripts]
    assert scripts == ["/ui/static/vendor/uPlot.iife.min.js", "/ui/static/app.js"]
    assert parser.stylesheets == ["/ui/static/vendor/uPlot.min.css", "/ui/static/app.css"]
    for src in scripts:
        r = await anon.get(src)
        assert r.status_code == 200, src
        assert r.headers["content-type"].split(";")[0] in JS, (src, r.headers["content-type"])
    for href in parser.stylesheets:
        r = await anon.get(href)
        assert r.status_code == 200, href
        assert r.headers["content-type"].split(";")[0] == "text/css", (href, r.headers["content-type"])


@pytest.mark.parametrize(
    ("path", "types"),
    [
        ("app.js", JS),
        ("app.css", ("text/css",)),
        ("vendor/uPlot.iife.min.js", JS),
        ("vendor/uPlot.min.css", ("text/css",)),
        ("vendor/uPlot.LICENSE.txt", ("text/plain",)),
    ],
)
async def test_static_files_are_served_whole_with_their_types_and_revalidate(
    anon: httpx.AsyncClient, path: str, types: tuple[str, ...]
):
    r = await anon.get(f"/ui/static/{path}")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].split(";")[0] in types, r.headers["content-type"]
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.content == (STATIC_DIR / path).read_bytes()
    again = await anon.get(f"/ui/static/{path}", headers={"If-None-Match": r.headers["etag"]})
    assert again.status_code == 304
    assert (await anon.head(f"/ui/static/{path}")).status_code == 200


@pytest.mark.parametrize(
    "path",
    [
        "/ui/static/nope.js",
        "/ui/static/",
        "/ui/static/vendor",
        "/ui/static/%2e%2e/index.html",
        "/ui/static/..%2f..%2fapi%2froutes%2fui.py",
        "/ui/static/%2fetc%2fpasswd",
    ],
)
async def test_missing_or_escaping_static_paths_are_404_problems(anon: httpx.AsyncClient, path: str):
    r = await anon.get(path)
    assert r.status_code == 404, (path, r.status_code, r.text[:200])
    assert r.headers["content-type"].startswith(PROBLEM)


async def test_the_dashboard_is_not_in_the_openapi_document(anon: httpx.AsyncClient):
    paths = (await anon.get("/openapi.json")).json()["paths"]
    assert paths  # the API itself is documented
    assert not [p for p in paths if p.startswith("/ui")], sorted(paths)


def test_our_own_files_name_no_external_url():
    """Everything the page needs comes from this server: no CDN, no fonts, no analytics."""
    ours = [UI_DIR / "index.html", STATIC_DIR / "app.js", STATIC_DIR / "app.css"]
    for path in ours:
        found = re.findall(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", path.read_text(), flags=re.IGNORECASE)
        assert not found, (path.name, found)
    vendored = (STATIC_DIR / "vendor" / "uPlot.iife.min.js").read_text()
    assert vendored.startswith("/*! https://github.com/leeoniya/uPlot (v1.6.32) */")  # its banner, a comment
    assert "MIT License" in (STATIC_DIR / "vendor" / "uPlot.LICENSE.txt").read_text()
