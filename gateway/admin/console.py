"""``/console/``: the admin console's three files, served from the package.

Off unless ``server.console: true``. The page itself needs no key (it holds no data);
everything it shows comes from the admin API with the key the operator signs in with.
Its own strict Content-Security-Policy allows scripts, styles and requests from this
origin only, and no framing.
"""

from __future__ import annotations

from importlib import resources
from typing import Final

from aiohttp import web

from gateway.errors import NotFound
from gateway.routing import RouteDef, RouteSpec

__all__ = ["CONSOLE_CSP", "routes"]

CONSOLE_CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
_FILES: Final = {
    "": ("index.html", "text/html"),
    "index.html": ("index.html", "text/html"),
    "console.js": ("console.js", "application/javascript"),
    "console.css": ("console.css", "text/css"),
}


def _read(name: str) -> bytes:
    return resources.files("gateway.admin").joinpath("static", "console", name).read_bytes()


_CONTENT: Final = {path: (_read(name), kind) for path, (name, kind) in _FILES.items()}


async def console_file(request: web.Request) -> web.Response:
    found = _CONTENT.get(request.match_info.get("file", ""))
    if found is None:
        raise NotFound("no such console file")
    body, kind = found
    return web.Response(
        body=body,
        content_type=kind,
        charset="utf-8",
        headers={"Content-Security-Policy": CONSOLE_CSP, "X-Frame-Options": "DENY"},
    )


async def to_console(request: web.Request) -> web.Response:
    raise web.HTTPPermanentRedirect("/console/")


def routes() -> list[RouteDef]:
    spec = RouteSpec("console", None, False, "The admin console (static files)")
    return [
        RouteDef("GET", "/console", to_console, spec),
        RouteDef("GET", "/console/", console_file, spec),
        RouteDef("GET", "/console/{file}", console_file, spec),
    ]
