"""Administration: the admin API (key lifecycle, usage, audit; scope ``admin``) and the
admin console, static files that talk to that API only.

May import `gateway.config`, `gateway.errors`, `gateway.routing`, `gateway.ops`,
`gateway.state` (stored keys, usage, audit) and `gateway.edge` (the caller, the key
table's sync). Nothing imports it but the app factory.
"""
