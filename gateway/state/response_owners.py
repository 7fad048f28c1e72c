"""Which tenant created each stored response id Tollway relayed: the SQL, written once
for SQLite and Postgres like the rest of the store.

An owner row expires (`expires_at`); an expired row answers as no row at all, and
`purge` deletes them in bounded batches.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.state.store import StateStore

__all__ = ["ResponseOwner", "ResponseOwnerQueries"]


@dataclass(frozen=True, slots=True)
class ResponseOwner:
    response_id: str
    tenant: str
    backend: str
    model: str | None
    key_id: str | None
    expires_at: float


class ResponseOwnerQueries:
    def __init__(self, store: StateStore) -> None:
        self.store = store

    async def save(self, owner: ResponseOwner, created_at: float) -> None:
        """Record `owner`; an id seen again (a retried call) keeps its first tenant."""
        await self.store.execute(
            "INSERT INTO tollway_response_owners "
            "(id, tenant, key_id, backend, model, created_at, expires_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
            (
                owner.response_id, owner.tenant, owner.key_id, owner.backend, owner.model,
                created_at, owner.expires_at,
            ),
        )  # fmt: skip

    async def get(self, response_id: str, now: float) -> ResponseOwner | None:
        rows = await self.store.fetch(
            "SELECT id, tenant, backend, model, key_id, expires_at "
            "FROM tollway_response_owners WHERE id = ? AND expires_at > ?",
            (response_id, now),
        )
        return ResponseOwner(*rows[0]) if rows else None

    async def delete(self, response_id: str) -> None:
        await self.store.execute("DELETE FROM tollway_response_owners WHERE id = ?", (response_id,))

    async def purge(self, now: float, batch: int = 500) -> int:
        """Delete up to `batch` expired rows; how many there were."""
        rows = await self.store.fetch(
            "SELECT id FROM tollway_response_owners WHERE expires_at <= ? LIMIT ?", (now, batch)
        )
        if rows:
            marks = ", ".join("?" * len(rows))
            await self.store.execute(
                f"DELETE FROM tollway_response_owners WHERE id IN ({marks})", [r[0] for r in rows]
            )
        return len(rows)
