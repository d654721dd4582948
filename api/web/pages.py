"""The service's own web pages: HTML under a strict Content-Security-Policy, and their files.

Every page the service serves (GraphiQL on ``GET /graphql``; the consoles to come)
is answered by ``page()``: a template of ``api/web/templates`` filled with escaped
values, sent with ``PAGE_HEADERS`` and a policy that lets the browser load
scripts, styles, fonts and images, and open connections, only from the service's
own origin (``POLICY``; docs/security.md says what each directive allows and why).
A page loads its files from two routes (``asset_routes()``):

- ``/assets/{path}``: the files of ``api/web/static``, written by us (plain
  JavaScript modules and CSS, no build step), answered with ``Cache-Control:
  no-cache`` and an ETag, so a browser revalidates and a new release shows at once;
- ``/assets/vendor/{package}@{version}/{file}``: the third-party files listed
  in ``VENDOR_FILES``, from the npm packages ``make install`` installs with
  ``npm ci`` (pinned and integrity-checked by ``assets/package-lock.json``) into
  ``BRANCHPAY_ASSETS_DIR``, outside the repository's tracked files. The installed
  version is in the address, so they are cached for a year as immutable.

Nothing else of the installed packages is served. When a listed file is not
installed, ``VendorFiles.missing()`` names it, and a page can say how to get it
instead of loading half.

A new page (``/demo``, ``/admin``) is a template here, a module of its own in
``static`` (no inline script: the policy refuses it) and a route answering
``page("its.html", values)``; one that must reach further says so with
``POLICY.allowing(...)``. Its browser test opens it with ``offline_page``
(tests/pages/conftest.py) and checks that nothing was blocked or violated.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from string import Template

from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

HERE = Path(__file__).parent
STATIC = HERE / "static"
TEMPLATES = HERE / "templates"

# Our own types, not the platform's mimetypes table: a module script in a
# JavaScript type, whatever /etc/mime.types says, or the browser refuses it.
MEDIA_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".json": "application/json",
}

# Sent with every page and file of ours.
PAGE_HEADERS = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
    "permissions-policy": "camera=(), microphone=(), geolocation=(), payment=()",
}

OWN_FILES_CACHE = "no-cache"
VENDOR_CACHE = "public, max-age=31536000, immutable"


@dataclass(frozen=True)
class Policy:
    """A Content-Security-Policy: each directive and the sources it allows."""

    directives: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def allowing(self, directive: str, *sources: str) -> Policy:
        """This policy with ``sources`` added to ``directive`` (a page that needs more says so)."""
        merged = dict(self.directives)
        merged[directive] = (*merged.get(directive, ()), *sources)
        return Policy(merged)

    def header(self, nonce: str | None = None) -> str:
        """The header's value; ``nonce`` lets the page's own script add <style> elements."""
        parts = []
        for name, sources in self.directives.items():
            allowed = list(sources)
            if nonce and name == "style-src":
                allowed.append(f"'nonce-{nonce}'")
            parts.append(" ".join([name, *allowed]))
        return "; ".join(parts)


# Only the service's own origin. `data:` images and fonts are those GraphiQL's
# stylesheet embeds (icons, its fonts): bytes inside a file we serve, no request.
POLICY = Policy(
    {
        "default-src": ("'self'",),
        "script-src": ("'self'",),
        "style-src": ("'self'",),
        "img-src": ("'self'", "data:"),
        "font-src": ("'self'", "data:"),
        "connect-src": ("'self'",),
        "object-src": ("'none'",),
        "base-uri": ("'none'",),
        "form-action": ("'self'",),
        "frame-ancestors": ("'none'",),
    }
)


def page(
    template: str,
    values: Mapping[str, str] | None = None,
    *,
    status_code: int = 200,
    policy: Policy = POLICY,
) -> Response:
    """The template ``templates/<template>`` with every ``$name`` replaced by its escaped value.

    ``$nonce`` is this answer's CSP nonce for styles (a library that adds a
    <style> element reads it from the page); every other value is text, escaped.
    """
    nonce = secrets.token_urlsafe(18)
    text = Template((TEMPLATES / template).read_text(encoding="utf-8"))
    filled = {name: escape(value) for name, value in (values or {}).items()}
    body = text.substitute(filled, nonce=nonce)
    headers = {
        **PAGE_HEADERS,
        "content-security-policy": policy.header(nonce),
        "cache-control": "no-store",
    }
    return HTMLResponse(body, status_code=status_code, headers=headers)


@dataclass(frozen=True)
class VendorFile:
    """A file of an installed npm package that a page loads."""

    package: str
    path: str


# Every third-party file a page may load, and nothing else of node_modules.
VENDOR_FILES = (
    VendorFile("react", "umd/react.production.min.js"),
    VendorFile("react-dom", "umd/react-dom.production.min.js"),
    VendorFile("graphiql", "graphiql.min.js"),
    VendorFile("graphiql", "graphiql.min.css"),
    VendorFile("@graphiql/plugin-explorer", "dist/index.umd.js"),
    VendorFile("@graphiql/plugin-explorer", "dist/style.css"),
)

VENDOR_PREFIX = "/assets/vendor/"


class VendorFiles:
    """The third-party files under ``root`` (BRANCHPAY_ASSETS_DIR): their addresses and bytes."""

    def __init__(self, root: Path, files: tuple[VendorFile, ...] = VENDOR_FILES) -> None:
        self.root = root
        self.files = files

    def _package_dir(self, package: str) -> Path:
        return self.root / "node_modules" / package

    def version(self, package: str) -> str | None:
        """The installed version of ``package``, or None when it is not installed."""
        try:
            manifest = json.loads((self._package_dir(package) / "package.json").read_bytes())
        except (OSError, ValueError):
            return None
        version = manifest.get("version") if isinstance(manifest, dict) else None
        return version if isinstance(version, str) else None

    def missing(self) -> list[str]:
        """The listed files that are not installed, as ``package/path``; empty when all are."""
        return [
            f"{file.package}/{file.path}"
            for file in self.files
            if self.version(file.package) is None
            or not (self._package_dir(file.package) / file.path).is_file()
        ]

    def url(self, package: str, path: str) -> str:
        """The address a page loads ``path`` of ``package`` from (its version included)."""
        if VendorFile(package, path) not in self.files:
            raise KeyError(f"{package}/{path} is not one of the vendor files served")
        version = self.version(package)
        if version is None:
            raise FileNotFoundError(f"{package} is not installed under {self.root}")
        return f"{VENDOR_PREFIX}{package}@{version}/{path}"

    def locate(self, address: str) -> Path | None:
        """The file behind ``address`` (as ``url`` gives it), or None when it is not served."""
        for file in self.files:
            version = self.version(file.package)
            if version is not None and address == f"{file.package}@{version}/{file.path}":
                return self._package_dir(file.package) / file.path
        return None

    async def serve(self, request: Request) -> Response:
        """The endpoint of ``/assets/vendor/{address}``."""
        path = self.locate(request.path_params["address"])
        if path is None or not path.is_file():
            return PlainTextResponse("not found", status_code=404, headers=PAGE_HEADERS)
        headers = {**PAGE_HEADERS, "cache-control": VENDOR_CACHE}
        return FileResponse(path, media_type=MEDIA_TYPES.get(path.suffix), headers=headers)


class OwnFiles(StaticFiles):
    """``api/web/static``, with our content types and headers; revalidated on every use."""

    def __init__(self) -> None:
        super().__init__(directory=STATIC)

    def file_response(
        self,
        full_path: str | os.PathLike[str],
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        media_type = MEDIA_TYPES.get(Path(full_path).suffix)
        if media_type and response.status_code == 200:
            response.headers["content-type"] = media_type
        response.headers.update({**PAGE_HEADERS, "cache-control": OWN_FILES_CACHE})
        return response


def asset_routes(vendor: VendorFiles) -> list[BaseRoute]:
    """The routes of the pages' files: the vendor files first, then ours."""
    return [
        Route(VENDOR_PREFIX + "{address:path}", vendor.serve, methods=["GET", "HEAD"]),
        Mount("/assets", app=OwnFiles(), name="assets"),
    ]
