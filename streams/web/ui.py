"""The web UI for customer-success teams, served by every worker under ``/ui/``.

Static files only (``streams/web/static/``: HTML, CSS and plain JavaScript
that draws its charts as SVG; no build step, nothing fetched from elsewhere).
The pages read the JSON API of the same worker (``/accounts``,
``/accounts/{id}/overview``, ``/accounts/{id}/history``) and post pulses to
``/accounts/{id}/pulse``; the token the user types is kept in the tab's
``sessionStorage`` only.

The files hold no data, so they are served without the token. Every
response carries a Content-Security-Policy that allows scripts, styles and
requests from this origin only: even a text that slipped into the page as
markup could not run a script.
"""

from __future__ import annotations

from importlib import resources

from faust.web import Request, Response, View

from streams.web.common import Api, error

__all__ = ["STATIC_FILES", "install_ui"]

#: File name -> content type of everything under ``/ui/``.
STATIC_FILES = {
    "index.html": "text/html",
    "account.html": "text/html",
    "app.css": "text/css",
    "common.js": "text/javascript",
    "charts.js": "text/javascript",
    "portfolio.js": "text/javascript",
    "account.js": "text/javascript",
}

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # The files change with the installed version only, but a worker upgraded
    # in place must not keep serving yesterday's script from a browser cache.
    "Cache-Control": "no-cache",
}


def _load() -> dict[str, bytes]:
    folder = resources.files("streams.web") / "static"
    return {name: (folder / name).read_bytes() for name in STATIC_FILES}


def install_ui(api: Api) -> None:
    app = api.app
    files = _load()

    def serve(web: View, name: str) -> Response:
        body = files.get(name)
        if body is None:
            return error(web, 404, "not_found", f"no file {name!r} under /ui/")
        # aiohttp refuses a charset inside content_type; the files are UTF-8
        # and the HTML says so in a meta tag.
        return web.bytes(body, content_type=STATIC_FILES[name], headers=dict(SECURITY_HEADERS))

    @app.page("/ui")
    async def ui_root(web: View, request: Request) -> Response:
        # Relative links in the pages need the trailing slash.
        return web.bytes(b"", status=302, headers={"Location": "/ui/"})

    @app.page("/ui/")
    async def ui_index(web: View, request: Request) -> Response:
        return serve(web, "index.html")

    @app.page("/ui/{name}")
    async def ui_file(web: View, request: Request, name: str) -> Response:
        return serve(web, name)
