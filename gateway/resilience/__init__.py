"""What keeps one failing dependency from taking the gateway down with it.

The guard every backend sits behind (breaker, bulkhead, deadline, retries with backoff,
outbound quota), the circuit breaker itself and the breakers of one backend (its own and
one per model), the retry policy (what is retried, how long to wait), the backend
registry (adapters built from config and started with the app), the rate limiters (GCRA
in-process or in Redis, used for inbound limits by the front door and for provider
quotas here) and the shared Redis client with its own short timeout and breaker.
Limiters live here rather than in `edge` because both directions use them, and the
Redis client because every Redis call must degrade, not fail.

May import `gateway.config`, `gateway.errors`, `gateway.ops` and `backends`.
"""
