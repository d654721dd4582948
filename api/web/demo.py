"""The partner storefront at ``/demo``: a partner's frontend, in demo mode only.

Served when ``BRANCHPAY_DEMO_PAGES`` is on (``branchpay serve --demo``, so
``make run``); otherwise none of its routes exist and ``/demo`` is a 404.

The page is ``templates/demo.html`` and the plain JavaScript modules of
``static/demo/`` (no build step). It talks to the service exactly as a
partner's frontend would: ``POST /graphql`` with a partner key in the
``Authorization`` header, and ``orderEvents`` over graphql-transport-ws with
the key in ``connection_init``. No key is ever written into the HTML:

- at start-up each API process creates a partner key of its own for every
  branch of plugins.toml, named ``demo-storefront-<pid>-<random>``, kept in
  memory only (the store holds its hash, as for every key) and revoked when the
  process stops;
- ``GET /demo/session`` hands that key to the page as JSON, ``no-store``.
  Anyone who can reach the service in demo mode can read it: that is what demo
  mode is for, on loopback; production never turns it on.

``GET /demo/qr.svg?text=...`` renders the QR code of a QR_CODE payment as SVG
with segno, from our own origin (the policy's img-src is 'self'); the text is
at most ``QR_MAX_CHARS`` characters.
"""

from __future__ import annotations

import io
import logging
import os
import secrets
from collections.abc import Sequence

import segno
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from api.domain.principal import Role
from api.store.keys import KeyAdminError, KeyRing
from api.web.pages import MEDIA_TYPES, PAGE_HEADERS, POLICY, Policy, page

log = logging.getLogger("branchpay.demo")

# A pay URL is about 60 characters; a QR code of 512 stays scannable and small.
QR_MAX_CHARS = 512
NO_STORE = {**PAGE_HEADERS, "cache-control": "no-store"}


def demo_policy(form_origins: Sequence[str]) -> Policy:
    """The pages' policy; a FORM_POST payment posts to a gateway, so form-action names it."""
    return POLICY.allowing("form-action", *form_origins) if form_origins else POLICY


class DemoStorefront:
    """The storefront's routes and the demo partner key of this process."""

    def __init__(self, form_origins: Sequence[str] = ()) -> None:
        self.policy = demo_policy(form_origins)
        self.key: str | None = None
        self.key_name: str | None = None
        self.branches: tuple[str, ...] = ()

    async def start(self, keys: KeyRing, branches: Sequence[str]) -> None:
        """Create this process's demo partner key for ``branches``."""
        self.branches = tuple(branches)
        if not self.branches:
            log.warning("demo storefront: plugins.toml has no branch; no demo key created")
            return
        name = f"demo-storefront-{os.getpid()}-{secrets.token_hex(3)}"
        _, self.key = await keys.create(name, Role.PARTNER, self.branches, by="serve --demo")
        self.key_name = name
        log.info("demo storefront: partner key %s for %s", name, ", ".join(self.branches))

    async def stop(self, keys: KeyRing) -> None:
        """Revoke the demo key (a process that crashes leaves it; revoke it with the CLI)."""
        name, self.key, self.key_name = self.key_name, None, None
        if name is None:
            return
        try:
            await keys.revoke(name)
        except KeyAdminError:
            pass  # revoked already, with the CLI
        except Exception as error:  # the store is down: shutting down goes on regardless
            log.warning(
                "demo storefront: key %s not revoked (%s); `branchpay keys revoke %s` does it",
                name,
                type(error).__name__,
                name,
            )

    async def storefront(self, request: Request) -> Response:
        return page("demo.html", policy=self.policy)

    async def session(self, request: Request) -> Response:
        if self.key is None:
            return JSONResponse(
                {"error": "the demo key is not ready (is any branch configured?)"},
                status_code=503,
                headers=NO_STORE,
            )
        return JSONResponse({"key": self.key, "branches": list(self.branches)}, headers=NO_STORE)

    async def qr(self, request: Request) -> Response:
        text = request.query_params.get("text", "")
        if not text or len(text) > QR_MAX_CHARS:
            return PlainTextResponse(
                f"text: 1 to {QR_MAX_CHARS} characters", status_code=400, headers=NO_STORE
            )
        out = io.BytesIO()
        segno.make(text, error="m").save(out, kind="svg", scale=6, border=2)
        return Response(out.getvalue(), media_type=MEDIA_TYPES[".svg"], headers=NO_STORE)

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/demo", self.storefront, methods=["GET", "HEAD"]),
            Route("/demo/session", self.session, methods=["GET"]),
            Route("/demo/qr.svg", self.qr, methods=["GET"]),
        ]
