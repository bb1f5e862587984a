"""/docs and /openapi.json: the API's reference, served by this server alone.

Swagger UI's files come from the ``fastapi-offline`` package, which ships them
(nothing is loaded from another host); the page is started by a script of ours,
so the Content-Security-Policy allows scripts from this origin only. Who may see
them is the guard's decision (``TOPIARY_DOCS``).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse

from service.errors import NotFoundError

DOCS_DIR = Path(__file__).resolve().parent.parent / "ui" / "docs"
SWAGGER_DIR = Path(str(files("fastapi_offline") / "static"))
_ASSETS = {"docs.js": (DOCS_DIR, "text/javascript; charset=utf-8"),
           "swagger-ui-bundle.js": (SWAGGER_DIR, "text/javascript; charset=utf-8"),
           "swagger-ui.css": (SWAGGER_DIR, "text/css; charset=utf-8"),
           "favicon.png": (SWAGGER_DIR, "image/png")}
SECURITY_HEADERS = {
    "Content-Security-Policy": ("default-src 'none'; script-src 'self'; style-src 'self'; "
                                "img-src 'self' data:; font-src 'self'; connect-src 'self'; "
                                "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)


@router.get("/openapi.json")
async def openapi(request: Request) -> JSONResponse:
    return JSONResponse(request.app.openapi())


@router.get("/docs")
async def docs_page() -> FileResponse:
    return FileResponse(DOCS_DIR / "docs.html", media_type="text/html; charset=utf-8",
                        headers=SECURITY_HEADERS)


@router.get("/docs/{name}")
async def docs_asset(name: str) -> FileResponse:
    """Swagger UI's script, stylesheet and icon, and the script that starts it.

    Raises:
        NotFoundError: not one of them.
    """
    if name not in _ASSETS:
        raise NotFoundError(f"no documentation asset named {name!r}")
    folder, media_type = _ASSETS[name]
    return FileResponse(folder / name, media_type=media_type, headers=SECURITY_HEADERS)
