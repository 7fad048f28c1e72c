"""The front door: everything a request meets before a route sees it.

The request pipeline (request id, access log and metrics, errors, body limit, per-IP
limit, auth, rate limit, token budget, compression), the common response headers, the
client address behind trusted proxies, the header deadline against slow clients, and
who is calling: the key table, its sync with the state store, the principal.

May import `gateway.config`, `gateway.errors`, `gateway.routing`, `gateway.ops`,
`gateway.resilience` (the limiters) and `gateway.state` (refusals audited, usage
recorded, keys loaded). It knows nothing of `llm`, `data`, `cache` or `admin`: routes
depend on the front door, never the other way.
"""
