"""Money as an integer count of fen (the CNY minor unit); never a float."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

CURRENCY = "CNY"


@dataclass(frozen=True, slots=True)
class Money:
    amount_fen: int
    currency: str = CURRENCY

    def __post_init__(self) -> None:
        if isinstance(self.amount_fen, bool) or not isinstance(self.amount_fen, int):
            raise TypeError("amount_fen must be an int count of fen")
        if self.amount_fen < 0:
            raise ValueError("amount_fen must not be negative")

    def __add__(self, other: Money) -> Money:
        self._same_currency(other)
        return Money(self.amount_fen + other.amount_fen, self.currency)

    def __mul__(self, times: int) -> Money:
        return Money(self.amount_fen * times, self.currency)

    def _same_currency(self, other: Money) -> None:
        if other.currency != self.currency:
            raise ValueError(f"cannot combine {self.currency} with {other.currency}")

    @property
    def yuan(self) -> str:
        """The amount as a yuan string with two decimals, e.g. ``"88.80"``."""
        return f"{Decimal(self.amount_fen).scaleb(-2):.2f}"
