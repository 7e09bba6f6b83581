"""The APNs provider token: the same bytes in every process for a 30-minute window,
verifiable as ES256 with the key's public half."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from freezegun import freeze_time

from followup_cli.push.provider_token import WINDOW_SECONDS, ProviderToken

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def test_token_is_a_valid_es256_jwt_with_the_window_start_as_iat(
    key: ec.EllipticCurvePrivateKey,
) -> None:
    with freeze_time(T0 + timedelta(minutes=17)):
        token = ProviderToken(key, "KEY1234567", "TEAM123456").current()
    claims = jwt.decode(
        token, key.public_key(), algorithms=["ES256"], options={"verify_iat": False}
    )
    assert claims == {"iss": "TEAM123456", "iat": int(T0.timestamp())}
    assert jwt.get_unverified_header(token) == {"alg": "ES256", "kid": "KEY1234567"}


def test_same_window_same_bytes_next_window_new_token(key: ec.EllipticCurvePrivateKey) -> None:
    a = ProviderToken(key, "K", "T")
    b = ProviderToken(key, "K", "T")  # another process
    with freeze_time(T0 + timedelta(seconds=1)):
        first = a.current()
    with freeze_time(T0 + timedelta(seconds=WINDOW_SECONDS - 1)):
        assert b.current() == first == a.current()
    with freeze_time(T0 + timedelta(seconds=WINDOW_SECONDS)):
        assert a.current() != first


def test_another_process_signs_the_same_bytes(key: ec.EllipticCurvePrivateKey) -> None:
    """RFC 6979: no random nonce, so a separate interpreter computes the same token."""
    from cryptography.hazmat.primitives import serialization

    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    code = (
        "import sys\n"
        "from cryptography.hazmat.primitives.serialization import load_pem_private_key\n"
        "from followup_cli.push.provider_token import ProviderToken\n"
        "key = load_pem_private_key(sys.stdin.read().encode(), password=None)\n"
        "print(ProviderToken(key, 'K', 'T').sign(1796112000))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], input=pem, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == ProviderToken(key, "K", "T").sign(1796112000)


def test_forget_signs_again_the_same_token_within_the_window(
    key: ec.EllipticCurvePrivateKey,
) -> None:
    token = ProviderToken(key, "K", "T")
    with freeze_time(T0):
        first = token.current()
        token.forget()
        assert token.current() == first  # same window, same bytes: nothing else to renew


def test_a_key_on_another_curve_is_refused() -> None:
    with pytest.raises(ValueError, match="P-256"):
        ProviderToken(ec.generate_private_key(ec.SECP384R1()), "K", "T")


def test_fall_back_uses_the_previous_window_s_token_while_it_is_young(
    key: ec.EllipticCurvePrivateKey,
) -> None:
    """After a refused renewal: the previous window's token until it is 50 minutes old,
    then this window's again; too late in a window there is nothing to fall back to."""
    token = ProviderToken(key, "K", "T")
    previous = ProviderToken(key, "K", "T").sign(int(T0.timestamp()) - WINDOW_SECONDS)
    with freeze_time(T0 + timedelta(minutes=5)):
        this_window = token.current()
        assert token.fall_back()
        assert token.current() == previous
    with freeze_time(T0 + timedelta(minutes=19, seconds=59)):
        assert token.current() == previous
    with freeze_time(T0 + timedelta(minutes=20)):
        assert token.current() == this_window
    with freeze_time(T0 + timedelta(minutes=21)):
        assert not token.fall_back()
