"""Clients and the revocation list (tables ``clients`` and ``revocations``)."""

from __future__ import annotations

import json

from fedsecure.types import Capabilities, Modality

from server.rounds.database import Database, Tx, now_ms


class ClientStore:
    """Who enrolled, what they declared, when they were last seen, who is revoked."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def upsert(self, *, name: str, capabilities: Capabilities, sdk_version: str, fingerprint: str) -> None:
        """Enrol a client or refresh its declared capabilities."""
        caps = json.dumps({"modalities": [int(m) for m in capabilities.modalities],
                           "sample_counts": dict(capabilities.sample_counts),
                           "backbone_sha256": capabilities.backbone_sha256, "block_shape": capabilities.block_shape},
                          sort_keys=True)
        t = now_ms()
        with self.db.tx() as tx:
            tx.execute(
                "INSERT INTO clients(name, state, capabilities, sdk_version, cert_fingerprint, enrolled_ms, last_seen_ms)"
                " VALUES(?, 'active', ?, ?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET capabilities=excluded.capabilities,"
                " sdk_version=excluded.sdk_version, cert_fingerprint=excluded.cert_fingerprint,"
                " last_seen_ms=excluded.last_seen_ms",
                (name, caps, sdk_version, fingerprint, t, t))

    def touch(self, name: str) -> bool:
        """Record that a client was seen; False if it never enrolled."""
        cur = self.db.conn.execute("UPDATE clients SET last_seen_ms=? WHERE name=?", (now_ms(), name))
        return cur.rowcount == 1

    @staticmethod
    def set_state(tx: Tx, name: str, state: str) -> None:
        """Mark a client active, exhausted or revoked (inside the caller's transaction)."""
        tx.execute("UPDATE clients SET state=? WHERE name=?", (state, name))

    def rows(self) -> list[tuple[str, str, Capabilities, str, int]]:
        """(name, state, capabilities, sdk version, last seen) of every enrolled client, by name."""
        return [(name, state, _capabilities(caps), sdk, seen) for name, state, caps, sdk, seen in self.db.conn.execute(
            "SELECT name, state, capabilities, sdk_version, last_seen_ms FROM clients ORDER BY name")]

    def capabilities(self, name: str) -> Capabilities | None:
        """What an enrolled client declared at its last Hello (None if it never enrolled)."""
        row = self.db.conn.execute("SELECT capabilities FROM clients WHERE name=?", (name,)).fetchone()
        return _capabilities(row[0]) if row else None

    def silent(self, names: list[str], *, seen_before_ms: int) -> list[str]:
        """Those of ``names`` not seen since ``seen_before_ms`` (no heartbeat, poll or
        submission), sorted; a name never enrolled counts as silent."""
        seen = {n: t for n, t in self.db.conn.execute(
            f"SELECT name, last_seen_ms FROM clients WHERE name IN ({','.join('?' * len(names))})", names)}
        return sorted(n for n in names if seen.get(n, 0) < seen_before_ms)

    def eligible(self, *, seen_since_ms: int) -> list[str]:
        """Active clients seen recently: the pool participants are sampled from."""
        rows = self.db.conn.execute(
            "SELECT name FROM clients WHERE state='active' AND last_seen_ms>=? ORDER BY name", (seen_since_ms,))
        return [r[0] for r in rows]

    @staticmethod
    def add_revocation(tx: Tx, name: str, reason: str) -> bool:
        """Put ``name`` on the revocation list and mark it revoked; True if it was not there yet."""
        cur = tx.execute("INSERT OR IGNORE INTO revocations(name, reason, revoked_ms) VALUES(?, ?, ?)",
                         (name, reason, now_ms()))
        tx.execute("UPDATE clients SET state='revoked' WHERE name=?", (name,))
        return cur.rowcount == 1

    def revoked_names(self) -> set[str]:
        """Names on the revocation list."""
        return {r[0] for r in self.db.conn.execute("SELECT name FROM revocations")}


def _capabilities(text: str) -> Capabilities:
    c = json.loads(text)
    return Capabilities(tuple(Modality(m) for m in c["modalities"]), tuple(sorted(c["sample_counts"].items())),
                        c.get("backbone_sha256", ""), c.get("block_shape", ""))
