"""The response cache: tenant-scoped keys, a bounded in-memory LRU or Redis shared by
replicas, single-flight for identical concurrent misses, and the helper routes use to
answer through it (`cached`).

May import `gateway.config`, `gateway.errors`, `gateway.ops`, `gateway.resilience`
(the shared Redis client) and `gateway.edge` (the caller's tenant).
"""
