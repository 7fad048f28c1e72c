"""What operators run and read: Prometheus metrics, JSON logs, error tracking, health
probes and their routes, the metrics route, the OpenAPI document, the app's lifecycle
(background tasks, loop-lag probe, readiness), worker processes, and the per-request
usage record that the access log, metrics and the usage store are fed from.

May import `gateway.config`, `gateway.errors`, `gateway.routing` and `backends.base`:
everything else reports to ops, ops reports to nobody.
"""
