"""The web console: static files shipped in the package (``static/``), no build step.

``/`` answers with the page; its scripts and styles are at ``/console/...``. Everything the
page shows it reads from the public JSON API (and /v1/admin with the token a person typed),
so the console can do nothing a ``curl`` could not.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).with_name("static")


def mount(app: FastAPI) -> None:
    app.mount("/console", StaticFiles(directory=STATIC), name="console")

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        # no-cache: a redeployed server's console must not run against last version's scripts
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})
