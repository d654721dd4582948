"""Providers' durable marks in the store: two API processes agree, a restart keeps them."""

from __future__ import annotations

from api.store import Store
from api.store.marks import COLLECTION, StoreMarks


async def test_two_processes_agree_and_a_restart_keeps_the_marks(
    mongo_uri: str, db_name: str
) -> None:
    first, second = Store.connect(mongo_uri, db_name), Store.connect(mongo_uri, db_name)
    try:
        one = StoreMarks(first.collection(COLLECTION), "unionpay")
        other = StoreMarks(second.collection(COLLECTION), "unionpay")
        assert not await other.has("closed:777:A1")
        await one.add("closed:777:A1")
        await other.add("closed:777:A1")  # idempotent
        assert await other.has("closed:777:A1")
        assert not await StoreMarks(second.collection(COLLECTION), "alipay").has("closed:777:A1")
    finally:
        await first.close()
        await second.close()
    restarted = Store.connect(mongo_uri, db_name)
    try:
        marks = StoreMarks(restarted.collection(COLLECTION), "unionpay")
        assert await marks.has("closed:777:A1")
        assert await restarted.collection(COLLECTION).count_documents({}) == 1
    finally:
        await restarted.close()
