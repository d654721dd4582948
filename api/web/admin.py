"""The branch admin console at ``/admin``: one page, ``static/admin.js`` does the rest.

The page holds no data and no key: the person signs in by pasting an API key,
kept in the tab's sessionStorage, and every value shown comes from the GraphQL
API with that key (so a partner key sees only what it may). Served always; it
is only useful with an admin key.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from api.web.pages import page


async def admin_page(request: Request) -> Response:
    return page("admin.html")
