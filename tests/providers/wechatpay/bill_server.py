"""The WeChat Pay simulator in a process of its own, its book filled with paid trades.

The streaming memory test runs it so that tracemalloc in the test process sees
the adapter's allocations only. Arguments: the merchant public key PEM file,
the platform private key PEM file, then ``DAY=ROWS`` pairs (Beijing days).
It prints its base URL on the first line of stdout and serves until stdin closes.
"""

from __future__ import annotations

import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from api.plugin import load_private_key, load_public_key
from providers.kit.bills import BillEntry
from providers.kit.loopback import LoopbackServer
from providers.wechatpay.simulator import Gateway, Merchant, create_app
from tests.providers.wechatpay.support import APPID, CERT_SERIAL_NO, MCHID, PLATFORM_KEY_ID


def fill_book(gateway: Gateway, day: date, rows: int, mchid: str = MCHID) -> None:
    """``rows`` paid trades of ``mchid`` on ``day``, straight into the gateway's book."""
    start = datetime.fromisoformat(f"{day}T00:00:00+08:00").astimezone(UTC)
    gateway.book.entries.extend(
        BillEntry(
            kind="PAYMENT",
            out_trade_no=f"wx{day:%Y%m%d}{number:012d}",
            trade_no=f"4200{number:024d}",
            amount_fen=100 + number % 900,
            at=start + timedelta(milliseconds=number),
            created_at=start,
            fee_fen=1,
            subject="话费充值",
            extra={"mchid": mchid, "openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"},
        )
        for number in range(rows)
    )


def main(argv: list[str]) -> None:
    merchant_public, platform_private, *days = argv
    merchant = Merchant(
        mchid=MCHID,
        appid=APPID,
        public_key=load_public_key(Path(merchant_public).read_text()),
        cert_serial_no=CERT_SERIAL_NO,
        apiv3_key=b"0" * 32,
    )
    app = create_app(
        merchants=[merchant],
        platform_private_key=load_private_key(Path(platform_private).read_text()),
        platform_public_key_id=PLATFORM_KEY_ID,
        publish_current_day=True,
        bill_url_seconds=300,
    )
    for pair in days:
        day, rows = pair.split("=")
        fill_book(app.state.gateway, date.fromisoformat(day), int(rows))
    with LoopbackServer(app) as server:
        print(server.url, flush=True)
        sys.stdin.read()


if __name__ == "__main__":
    main(sys.argv[1:])
