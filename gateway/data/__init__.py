"""The data path: read-only SQL (`/v1/query`), the semantic layer of datasets
(dimensions, metrics, filters, always scoped to the caller's tenant), the SQL guard that
lets only one read-only statement through, result rows as JSON, and the OData v4 feeds
for BI tools.

Filters: `filter_tree` (the nodes), `odata_filter` (``$filter`` read into them),
`dataset_request` (the JSON filters read into them), `filter_compiler` (nodes to SQL per
dialect, Edm-checked, literals bound), `edm` (backend types as Edm types). Datasets:
`datasets` (SQL building), `schema` (types and nullability), `runner` (running through
the guard). Feeds: `odata` (routes), `odata_page` (one page: rows, JSON, next link),
`odata_json` (a page's JSON written by the database) and `json_columns` (each column's
values as JSON in SQL), `odata_options`, `odata_metadata`, `odata_limits`, and `keyset`
(keyset paging and signed ``$skiptoken``).

May import `gateway.config`, `gateway.errors`, `gateway.routing`, `gateway.ops`,
`gateway.resilience`, `gateway.state`, `gateway.edge`, `gateway.cache` and
`backends.base`. Nothing imports it but the app factory.
"""
