"""Tokens: 256 random bits shown once, stored as their SHA-256, compared in constant time.

A token is as hard to guess as a key, so a fast hash is right for it (a slow password hash
would only slow down every request); the stored hash is useless to whoever reads the database.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets

PREFIX = "mh_"  # says what it is, to people and to secret scanners
BASIC_USER = "token"  # `curl -u token:$TOKEN`, as published examples do
MIN_CHOSEN_LENGTH = 32  # MODELHOST_ADMIN_TOKEN: chosen by a person, so ask for enough of it


def new_token() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def new_token_id() -> str:
    return secrets.token_hex(6)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def same_hash(a: str, b: str) -> bool:
    return secrets.compare_digest(a.encode(), b.encode())


def credential(authorization: bytes) -> tuple[str, str | None] | None:
    """The token an Authorization header carries, and the Basic user name if any."""
    scheme, _, value = authorization.decode("latin-1").strip().partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer" and value:
        return value, None
    if scheme.lower() == "basic" and value:
        try:
            user, sep, password = base64.b64decode(value, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        if sep and password:
            return password, user
    return None
