"""Example Pay's gateway on loopback, for tests and demos: attempts live in memory.

``POST /pay/{out_trade_no}`` with ``outcome=success|fail|close`` settles an
attempt and posts the signed notification to its notify URL (a few tries);
``POST /control/settle/{out_trade_no}`` does the same but returns the
notification body instead of sending it; ``POST /control/resign/{out_trade_no}``
returns the latest notification with ``amount``, ``merchant_id`` or
``out_trade_no`` changed, signed anew with the merchant's key.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from branchpay_example_provider import signing
from providers.kit import Notifier, page
from providers.kit import pay_page as render_pay_page

_OUTCOMES = {
    "success": ("PAID", "paid"),
    "fail": ("FAILED", "failed"),
    "close": ("CLOSED", "closed"),
}


@dataclass
class _Attempt:
    out_trade_no: str
    amount: int
    subject: str
    notify_url: str
    status: str = "WAITING"
    refunds: dict[str, int] = field(default_factory=dict)
    latest: dict[str, Any] = field(default_factory=dict)  # the last notification's fields


def create_app(merchant_id: str, api_key: bytes) -> Starlette:
    attempts: dict[str, _Attempt] = {}
    # Example Pay takes a notification as received when the answer is 200 "success".
    notifier = Notifier(
        retry_delays=(0.5, 1.0),
        accept=lambda response: response.status_code == 200 and response.text == "success",
        timeout=5.0,
    )

    def answer(**fields: Any) -> JSONResponse:
        return JSONResponse({**fields, "sign": signing.sign(api_key, fields)})

    def notification(attempt: _Attempt, event: str, amount: int, **extra: str) -> bytes:
        fields: dict[str, Any] = {
            "notify_id": uuid.uuid4().hex,
            "merchant_id": merchant_id,
            "event": event,
            "out_trade_no": attempt.out_trade_no,
            "amount": amount,
            "time": int(time.time()),
            **extra,
        }
        attempt.latest = fields
        return signed_form(fields)

    def signed_form(fields: dict[str, Any]) -> bytes:
        return urlencode({**fields, "sign": signing.sign(api_key, fields)}).encode()

    def send(url: str, body: bytes) -> None:
        headers = {"content-type": "application/x-www-form-urlencoded"}
        notifier.in_background(url, lambda: (headers, body))

    async def signed_request(request: Request) -> dict[str, Any] | None:
        fields: dict[str, Any] = await request.json()
        genuine = signing.is_genuine(api_key, fields) and fields.get("merchant_id") == merchant_id
        return fields if genuine else None

    async def create(request: Request) -> Response:
        fields = await signed_request(request)
        if fields is None:
            return answer(result="BAD_SIGN")
        out_trade_no = str(fields["out_trade_no"])
        known = attempts.get(out_trade_no)
        if known is not None and known.amount != fields["amount"]:
            return answer(result="REFUSED", reason="out_trade_no reused")
        attempts.setdefault(
            out_trade_no,
            _Attempt(
                out_trade_no,
                int(fields["amount"]),
                str(fields["subject"]),
                str(fields["notify_url"]),
            ),
        )
        return answer(
            result="OK", pay_url=f"{str(request.base_url).rstrip('/')}/pay/{out_trade_no}"
        )

    async def query(request: Request) -> Response:
        fields = await signed_request(request)
        if fields is None:
            return answer(result="BAD_SIGN")
        attempt = attempts.get(str(fields["out_trade_no"]))
        if attempt is None:
            return answer(result="NOT_FOUND")
        return answer(
            result="OK",
            status=attempt.status,
            amount=attempt.amount,
            refunded=sum(attempt.refunds.values()),
        )

    async def close(request: Request) -> Response:
        fields = await signed_request(request)
        if fields is None:
            return answer(result="BAD_SIGN")
        attempt = attempts.get(str(fields["out_trade_no"]))
        if attempt is None:
            return answer(result="NOT_FOUND")
        if attempt.status == "PAID":
            return answer(result="REFUSED", reason="already paid")
        if attempt.status == "WAITING":
            attempt.status = "CLOSED"
        return answer(result="OK")

    async def refund(request: Request) -> Response:
        fields = await signed_request(request)
        if fields is None:
            return answer(result="BAD_SIGN")
        attempt = attempts.get(str(fields["out_trade_no"]))
        if attempt is None or attempt.status != "PAID":
            return answer(result="REFUSED", reason="not paid")
        number, amount = str(fields["out_refund_no"]), int(fields["amount"])
        if number in attempt.refunds:
            # The same refund number is the same refund: answer it again, pay it once.
            return answer(result="OK" if attempt.refunds[number] == amount else "REFUSED")
        if amount <= 0 or sum(attempt.refunds.values()) + amount > attempt.amount:
            return answer(result="REFUSED", reason="more than was paid")
        attempt.refunds[number] = amount
        notify_url = str(fields.get("notify_url") or attempt.notify_url)
        send(notify_url, notification(attempt, "refunded", amount, out_refund_no=number))
        return answer(result="OK")

    def settle(out_trade_no: str, outcome: str) -> tuple[_Attempt, bytes] | Response:
        attempt = attempts.get(out_trade_no)
        if attempt is None or outcome not in _OUTCOMES:
            return PlainTextResponse("no such attempt or outcome", status_code=404)
        if attempt.status != "WAITING":
            return PlainTextResponse(f"already {attempt.status}", status_code=409)
        attempt.status, event = _OUTCOMES[outcome]
        return attempt, notification(attempt, event, attempt.amount)

    async def pay_page(request: Request) -> Response:
        attempt = attempts.get(request.path_params["out_trade_no"])
        if attempt is None:
            return HTMLResponse("<h1>No such payment</h1>", status_code=404)
        return HTMLResponse(
            render_pay_page(
                "Example Pay", lines=[attempt.subject, "CNY"], amount_fen=attempt.amount
            )
        )

    async def pay(request: Request) -> Response:
        form = await request.form()
        settled = settle(request.path_params["out_trade_no"], str(form.get("outcome", "")))
        if isinstance(settled, Response):
            return settled
        attempt, body = settled
        send(attempt.notify_url, body)
        return HTMLResponse(page("Example Pay", heading=f"Payment {attempt.status.lower()}"))

    async def control_settle(request: Request) -> Response:
        data = await request.json()
        settled = settle(request.path_params["out_trade_no"], str(data.get("outcome", "")))
        if isinstance(settled, Response):
            return settled
        return JSONResponse({"body": settled[1].decode()})

    async def control_redeliver(request: Request) -> Response:
        # A re-delivery keeps notify_id and is signed anew at the time it is sent.
        attempt = attempts.get(request.path_params["out_trade_no"])
        if attempt is None or not attempt.latest:
            return PlainTextResponse("no notification for that attempt", status_code=404)
        body = signed_form({**attempt.latest, "time": int(time.time())})
        return JSONResponse({"body": body.decode()})

    async def control_resign(request: Request) -> Response:
        attempt = attempts.get(request.path_params["out_trade_no"])
        if attempt is None or not attempt.latest:
            return PlainTextResponse("no notification for that attempt", status_code=404)
        data = await request.json()
        changes = {
            name: data[name]
            for name in ("amount", "merchant_id", "out_trade_no")
            if data.get(name) is not None
        }
        return JSONResponse({"body": signed_form({**attempt.latest, **changes}).decode()})

    return Starlette(
        routes=[
            Route("/orders", create, methods=["POST"]),
            Route("/orders/query", query, methods=["POST"]),
            Route("/orders/close", close, methods=["POST"]),
            Route("/refunds", refund, methods=["POST"]),
            Route("/pay/{out_trade_no}", pay_page, methods=["GET"]),
            Route("/pay/{out_trade_no}", pay, methods=["POST"]),
            Route("/control/settle/{out_trade_no}", control_settle, methods=["POST"]),
            Route("/control/redeliver/{out_trade_no}", control_redeliver, methods=["POST"]),
            Route("/control/resign/{out_trade_no}", control_resign, methods=["POST"]),
        ],
        lifespan=notifier.lifespan,
    )
