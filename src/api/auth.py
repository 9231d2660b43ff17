"""API keys: stored as SHA-256 digests, compared in constant time, never logged."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from uuid import UUID



@dataclass(frozen=True)
class Principal:
    """Who is calling: a role, an actor name for the audit trail, a customer scope for self-service."""

    role: str
    actor: str
    customer_id: UUID | None = None


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyRing:
    """The configured keys, by digest; authenticate() checks every entry so timing tells nothing."""

    def __init__(self, keys: dict[str, str]) -> None:
        self._entries = [(bytes.fromhex(digest(k)), role) for k, role in keys.items()]

    def __len__(self) -> int:
        return len(self._entries)

    def authenticate(self, presented: str) -> Principal | None:
        presented_digest = bytes.fromhex(digest(presented))
        found: str | None = None
        for entry_digest, role in self._entries:
            if hmac.compare_digest(entry_digest, presented_digest):
                found = role
        if found is None:
            return None
        # The actor names the role and a short fingerprint of the key (not the key itself).
        actor = f"{found.split(':')[0]}:{presented_digest.hex()[:8]}"
        if found.startswith("customer:"):
            return Principal("customer", actor, UUID(found.removeprefix("customer:")))
        return Principal(found, actor)
