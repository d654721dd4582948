"""Personal data at rest and on output (pure)."""

from __future__ import annotations

import os

import pytest
from cryptography.exceptions import InvalidTag

from api.domain.order import valid_id_card
from api.domain.pii import PiiVault, mask_id_card, mask_phone


def test_encryption_round_trips_and_binds_the_context() -> None:
    vault = PiiVault(os.urandom(32))
    token = vault.encrypt("13812345678", "phone")
    assert "13812345678" not in token
    assert vault.encrypt("13812345678", "phone") != token  # a fresh nonce every time
    assert vault.decrypt(token, "phone") == "13812345678"
    with pytest.raises(InvalidTag):
        vault.decrypt(token, "idCard")
    with pytest.raises(InvalidTag):
        PiiVault(os.urandom(32)).decrypt(token, "phone")


def test_fingerprints_find_a_number_without_revealing_it() -> None:
    key = os.urandom(32)
    vault = PiiVault(key)
    assert vault.fingerprint("13812345678", "phone") == PiiVault(key).fingerprint(
        "13812345678", "phone"
    )
    assert vault.fingerprint("13812345678", "phone") != vault.fingerprint("13812345679", "phone")
    assert vault.fingerprint("13812345678", "phone") != PiiVault(os.urandom(32)).fingerprint(
        "13812345678", "phone"
    )


def test_short_keys_are_refused() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        PiiVault(b"too short")


def test_masks() -> None:
    assert mask_phone("13812345678") == "138****5678"
    assert mask_id_card("11010519491231002X") == "110105***********X"


@pytest.mark.parametrize(
    ("number", "valid"),
    [("11010519491231002X", True), ("110105194912310021", False), ("1101051949123100", False)],
)
def test_id_card_check_character(number: str, valid: bool) -> None:
    assert valid_id_card(number) is valid
