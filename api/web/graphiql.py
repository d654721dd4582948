"""GraphiQL, with the explorer plugin, served from the service itself (no CDN).

``GET /graphql`` from a browser answers ``templates/graphiql.html``: the vendor
files of GraphiQL, its explorer and React (api/web/pages.py, installed by
``make install``), and ``static/graphiql.js``, our module that starts GraphiQL
with the API key the user gives. When those files are not installed, it answers
``templates/assets-missing.html`` (503), which says how to install them, rather
than a page that would wait for scripts that never come.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from api.web.pages import VendorFiles, page


class GraphiQLPage:
    def __init__(self, vendor: VendorFiles) -> None:
        self.vendor = vendor

    async def __call__(self, request: Request) -> Response:
        missing = self.vendor.missing()
        if missing:
            return page(
                "assets-missing.html",
                {"assets_dir": str(self.vendor.root), "missing": ", ".join(missing)},
                status_code=503,
            )
        url = self.vendor.url
        return page(
            "graphiql.html",
            {
                "react": url("react", "umd/react.production.min.js"),
                "react_dom": url("react-dom", "umd/react-dom.production.min.js"),
                "graphiql_js": url("graphiql", "graphiql.min.js"),
                "graphiql_css": url("graphiql", "graphiql.min.css"),
                "explorer_js": url("@graphiql/plugin-explorer", "dist/index.umd.js"),
                "explorer_css": url("@graphiql/plugin-explorer", "dist/style.css"),
            },
        )
