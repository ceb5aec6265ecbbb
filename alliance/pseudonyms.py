"""Keyed pseudonyms for client identifiers: HMAC-SHA256 of clinic and client reference."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

import polars as pl

from alliance.errors import KeyMissing
from alliance.settings import Settings

TOKEN_HEX = 24  # 96 bits: collision-free in practice for any network's client count


def pseudonym(key: bytes, clinic_id: str, client_ref: str) -> str:
    """Stable token of one client: same key, clinic and reference give the same token."""
    message = f"{clinic_id}\x1f{client_ref}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()[:TOKEN_HEX]


def key_fingerprint(key: bytes) -> str:
    """Identifies a key without revealing it: the warehouse records it to refuse a run with another key."""
    return hmac.new(key, b"alliance-watch key fingerprint", hashlib.sha256).hexdigest()[:16]


def pseudonymise(refs: pl.Series, key: bytes, clinic_id: str) -> pl.Series:
    """Token per reference, computed once per distinct reference; nulls stay null."""
    distinct = refs.drop_nulls().unique()
    tokens = {ref: pseudonym(key, clinic_id, ref) for ref in distinct.to_list()}
    return refs.replace_strict(tokens, default=None, return_dtype=pl.String).alias("client_id")


def new_key() -> bytes:
    return secrets.token_hex(32).encode()


def create_key_file(path: Path, key: bytes | None = None) -> bool:
    """Write a key (a new random one by default) readable only by its owner; False when the file exists."""
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write((key or new_key()).decode() + "\n")
    return True


def load_key(settings: Settings) -> bytes:
    """The pseudonym key from ALLIANCE_HMAC_KEY, else from the home's key file."""
    if settings.hmac_key is not None:
        value = settings.hmac_key.get_secret_value().strip()
        if len(value) < 16:
            raise KeyMissing("ALLIANCE_HMAC_KEY is shorter than 16 characters; use a long random value")
        return value.encode()
    path = settings.key_file
    if not path.exists():
        raise KeyMissing(f"no pseudonym key: set ALLIANCE_HMAC_KEY or run `alliance init` to create {path}")
    if path.stat().st_mode & 0o077:
        raise KeyMissing(f"{path} is readable by others; run `chmod 600 {path}`")
    return path.read_text(encoding="utf-8").strip().encode()
