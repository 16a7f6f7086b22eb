"""Bearer tokens for `sisa serve`: roles, and a store that keeps only their hashes.

A token is shown once, when it is made; the file keeps its sha256, its name and role. A
presented token is hashed and compared with every stored hash in constant time
(`hmac.compare_digest`), so timing says nothing about how much of a token matched.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from dataclasses import asdict, dataclass

from sisa.config import SisaConfig
from sisa.storage import layout
from sisa.storage.errors import NotFoundError, ValidationError
from sisa.storage.store import Store, now_iso

ROLES = ("requester", "approver", "auditor", "client", "admin")
# What each action needs; admin may do everything (but approve its own requests: sisa/service/privacy.py).
PERMISSIONS = {
    "file_request": {"requester"},
    "read_requests": {"requester", "approver", "auditor"},
    "approve_or_reject": {"approver"},  # approve or reject a request awaiting approval (four eyes)
    "read_evidence": {"auditor"},  # certificates, versions, the audit page
    "complete": {"client"},
}


def allowed(role: str, action: str) -> bool:
    return role == "admin" or role in PERMISSIONS[action]


@dataclass
class TokenEntry:
    name: str
    role: str
    sha256: str
    created_at: str
    revoked_at: str | None = None


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class TokenStore:
    """Token hashes in one JSON file: `service.tokens_file`, or service/tokens.json in the store."""

    def __init__(self, store: Store, cfg: SisaConfig):
        self.store = store
        self.path = cfg.service.tokens_file or None

    def _read(self) -> list[TokenEntry]:
        if self.path:
            if not os.path.exists(self.path):
                return []
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
        else:
            if not self.store.fs.exists(layout.SERVICE_TOKENS):
                return []
            data = self.store.fs.read_json(layout.SERVICE_TOKENS)
        return [TokenEntry(**e) for e in data["tokens"]]

    def _write(self, entries: list[TokenEntry]) -> None:
        data = {"tokens": [asdict(e) for e in entries]}
        if self.path:
            tmp = f"{self.path}.{secrets.token_hex(4)}.tmp"
            with open(os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600), "w", encoding="utf-8") as f:
                json.dump(data, f, indent=2, sort_keys=True)
            os.replace(tmp, self.path)
        else:
            self.store.fs.write_json(layout.SERVICE_TOKENS, data)

    def create(self, name: str, role: str) -> str:
        """A new token (returned once; only its hash is kept)."""
        if role not in ROLES:
            raise ValidationError(f"--role should be one of {', '.join(ROLES)}, got {role!r}")
        name = name.strip()
        if not name or len(name) > 64 or not all(c.isalnum() or c in "-_." for c in name):
            raise ValidationError(f"--name should be 1-64 letters, digits, '-', '_' or '.', got {name!r}")
        entries = self._read()
        if any(e.name == name and e.revoked_at is None for e in entries):
            raise ValidationError(f"a token named {name!r} exists; revoke it first or pick another name")
        token = "sisa_" + secrets.token_urlsafe(32)
        entries.append(TokenEntry(name, role, _digest(token), now_iso()))
        self._write(entries)
        return token

    def list(self) -> list[TokenEntry]:
        return self._read()

    def revoke(self, name: str) -> TokenEntry:
        entries = self._read()
        live = [e for e in entries if e.name == name and e.revoked_at is None]
        if not live:
            raise NotFoundError(f"no live token named {name!r} (see `sisa token list`)")
        for e in live:
            e.revoked_at = now_iso()
        self._write(entries)
        return live[0]

    def check(self, token: str) -> TokenEntry | None:
        """The live entry a presented token belongs to, or None. Every stored hash is compared,
        each in constant time, whether or not an earlier one matched."""
        presented = _digest(token)
        found = None
        for e in self._read():
            if hmac.compare_digest(presented, e.sha256) and e.revoked_at is None:
                found = e
        return found
