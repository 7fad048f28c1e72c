"""The data path: read-only SQL (`/v1/query`), the semantic layer of datasets
(dimensions, metrics, filters, always scoped to the caller's tenant), the SQL guard that
lets only one read-only statement through, result rows as JSON, and the OData v4 feeds
for BI tools with their `$filter` parser.

May import `gateway.config`, `gateway.errors`, `gateway.routing`, `gateway.ops`,
`gateway.resilience`, `gateway.state`, `gateway.edge`, `gateway.cache` and
`backends.base`. Nothing imports it but the app factory.
"""
