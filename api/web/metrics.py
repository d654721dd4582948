"""``GET /metrics`` on the API port: Prometheus' text format, behind the metrics bearer token.

On the partner port metrics are never served without protection: the caller
sends ``Authorization: Bearer <BRANCHPAY_METRICS_TOKEN>`` (compared in
constant time), or gets a coded JSON 401. Without a token configured the
route answers a coded 404 saying how to enable it; ``BRANCHPAY_METRICS_PORT``
serves the metrics without a token on a separate listener instead
(api/cli/__init__.py). With ``metrics`` off the answer is a coded 404 too.
"""

from __future__ import annotations

import hmac

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from api.settings import Settings
from api.store.keys import bearer_token
from api.telemetry import metrics


def _refusal(status: int, code: str, message: str, **headers: str) -> Response:
    body = {"data": None, "errors": [{"message": message, "extensions": {"code": code}}]}
    return JSONResponse(body, status_code=status, headers=headers or None)


class MetricsEndpoint:
    def __init__(self, settings: Settings) -> None:
        self.enabled = settings.metrics
        token = settings.metrics_token.get_secret_value() if settings.metrics_token else ""
        self.token = token.encode()

    async def answer(self, request: Request) -> Response:
        if not self.enabled:
            return _refusal(
                404, "NOT_FOUND", "metrics are off; set BRANCHPAY_METRICS=true to record them"
            )
        if not self.token:
            return _refusal(
                404,
                "NOT_FOUND",
                "metrics are not served on the API port without a token: set "
                "BRANCHPAY_METRICS_TOKEN (then send `Authorization: Bearer <token>`), or "
                "BRANCHPAY_METRICS_PORT for a separate listener (docs/operations.md)",
            )
        given = bearer_token(request.headers.get("authorization")) or ""
        if not hmac.compare_digest(given.encode(), self.token):
            return _refusal(
                401,
                "UNAUTHENTICATED",
                "send the metrics token as `Authorization: Bearer <token>`",
                **{"www-authenticate": "Bearer"},
            )
        return Response(metrics.render(), media_type=metrics.CONTENT_TYPE)
