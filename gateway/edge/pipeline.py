"""The request path as one function: every check of the front door, in order, for every
request, with what each route needs decided once at start (`RoutePlan`).

Order, outermost first: request id → access log and metrics → compression → errors →
body limit → per-IP limit → auth → rate limit → token budget → route. Logs and metrics
see the final status; the body's size is checked before any key is looked up; limits
need the key. Each check is its own small function in its own module; this module only
composes them, so the order reads here and a request pays for nothing its route does not
use. It is aiohttp's only middleware: one call, no chain of partials per request, and the
request's one context variable (`current_usage`) set once.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Handler
from aiohttp.web_urldispatcher import AbstractRoute

from gateway.edge.access_log import AccessLog, RouteMeter, route_label
from gateway.edge.auth import Authenticator, presented_key
from gateway.edge.body_limit import BodyLimits
from gateway.edge.budget import BUDGETED, Budgets
from gateway.edge.client_ip import request_ip
from gateway.edge.compression import Compressor
from gateway.edge.error_answers import (
    broken_body,
    error_response,
    from_http_exception,
    unexpected,
)
from gateway.edge.ip_limit import IpLimits
from gateway.edge.principal import principal_key
from gateway.edge.rate_limit import RateLimits
from gateway.edge.request_id import RequestIds, request_id_key
from gateway.edge.request_state import RequestState, request_state_key
from gateway.errors import TollwayError, Unauthorized
from gateway.ops.error_tracking import ErrorTracker
from gateway.ops.metrics import Metrics
from gateway.ops.request_usage import RequestUsage, current_usage, usage_key
from gateway.routing import RouteSpec, route_spec_key

__all__ = ["Pipeline", "RoutePlan", "pipeline_key"]


@dataclass(slots=True)
class RoutePlan:
    """What one route needs of the front door, worked out once."""

    spec: RouteSpec | None
    meter: RouteMeter
    keyed: bool
    """A key is required (the route has a scope)."""
    ip_limited: bool
    """Requests without a (valid) key spend the address's allowance."""
    rate_limited: bool
    budgeted: bool
    tavily_errors: bool
    """Errors also carry Tavily's ``detail.error`` (search routes)."""

    @property
    def route_class(self) -> str | None:
        return self.spec.route_class if self.spec is not None else None


class Pipeline:
    """The front door. Build it with the app's parts, `plan` its routes once they are
    added, then register it as the app's middleware."""

    def __init__(
        self,
        *,
        metrics: Metrics,
        request_ids: RequestIds,
        access_log: AccessLog,
        compressor: Compressor | None,
        body_limits: BodyLimits,
        ip_limits: IpLimits,
        auth: Authenticator,
        rate_limits: RateLimits,
        budgets: Budgets,
        errors: ErrorTracker,
    ) -> None:
        self._metrics = metrics
        self._ids = request_ids
        self.access_log = access_log
        self._compressor = compressor
        self._body_limits = body_limits
        self._ip_limits = ip_limits
        self.auth = auth
        self._rate_limits = rate_limits
        self._budgets = budgets
        self._errors = errors
        self._plans: dict[AbstractRoute, RoutePlan] = {}
        self._unmatched = self._plan_for(None, "unmatched")

    def plan(self, specs: dict[AbstractRoute, RouteSpec]) -> None:
        """Work out each route's plan (call once the routes are added)."""
        for route in specs.keys() | {r for r in self._plans}:
            resource = route.resource
            label = resource.canonical if resource is not None else "unmatched"
            self._plans[route] = self._plan_for(specs.get(route), label)

    def _plan_for(self, spec: RouteSpec | None, label: str) -> RoutePlan:
        keyed = spec is not None and spec.scope is not None
        return RoutePlan(
            spec=spec,
            meter=RouteMeter(self._metrics, label),
            keyed=keyed,
            ip_limited=self._ip_limits.on and (spec is None or keyed),
            rate_limited=keyed and spec is not None and spec.limited,
            budgeted=keyed and spec is not None and spec.route_class in BUDGETED,
            tavily_errors=spec is not None and spec.route_class == "search",
        )

    def _plan_of(self, request: web.Request) -> RoutePlan:
        route = request.match_info.route
        plan = self._plans.get(route)
        if plan is None:  # a system route (404, 405) or one added late
            if route.resource is None:
                return self._unmatched
            plan = self._plans[route] = self._plan_for(None, route_label(request))
        return plan

    @web.middleware
    async def handle(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        request_id = self._ids.for_request(request.headers.get("X-Request-ID"))
        usage = RequestUsage(request_id=request_id)
        state = RequestState(started, usage, request_ip(request))
        request[request_id_key] = request_id
        request[usage_key] = usage
        request[request_state_key] = state
        token = current_usage.set(usage)
        plan = self._plan_of(request)
        in_flight = self.access_log.in_flight
        in_flight.inc()
        status = 500
        response: web.StreamResponse | None = None
        try:
            response = await self._answer(request, handler, plan, state)
            if self._compressor is not None:
                await self._compressor.compress(request, response)
            status = usage.status or response.status
            return response
        except asyncio.CancelledError:
            # The client went away (499, nginx's name for it), unless a stream had already
            # ended for it and said how.
            status = usage.status or 499
            raise
        finally:
            in_flight.dec()
            elapsed = time.perf_counter() - started
            self.access_log.record(
                request.method, state.client_ip, plan.meter, plan.route_class, usage, status,
                elapsed, response,
            )  # fmt: skip
            current_usage.reset(token)

    async def _answer(
        self, request: web.Request, handler: Handler, plan: RoutePlan, state: RequestState
    ) -> web.StreamResponse:
        """The route's answer after the checks, or the error answer in the one shape."""
        usage = state.usage
        try:
            return await self._checked(request, handler, plan, state)
        except TollwayError as error:
            return error_response(error, usage.request_id, tavily_shape=plan.tavily_errors)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            mapped = from_http_exception(exc)
            return error_response(mapped, usage.request_id, tavily_shape=plan.tavily_errors)
        except web.RequestPayloadError:
            refused = broken_body(request, self._metrics, plan.meter.route)
            answer = error_response(refused, usage.request_id, tavily_shape=plan.tavily_errors)
            answer.force_close()
            return answer
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            bug = unexpected(
                exc, self._errors, request_id=usage.request_id, route=plan.meter.route,
                key_id=usage.key_id,
            )  # fmt: skip
            return error_response(bug, usage.request_id, tavily_shape=plan.tavily_errors)

    async def _checked(
        self, request: web.Request, handler: Handler, plan: RoutePlan, state: RequestState
    ) -> web.StreamResponse:
        spec = plan.spec
        usage = state.usage
        self._body_limits.check(request, spec)
        key = presented_key(request, basic=False)
        ip = state.client_ip
        ip_windows = self._ip_limits.windows(ip) if plan.ip_limited else ()
        if ip_windows:
            keyed = key is not None or presented_key(request, basic=True) is not None
            await self._ip_limits.check(
                request, ip_windows, plan.route_class or "unmatched", keyed=keyed
            )
            if not keyed:
                ip_windows = ()  # counted already: a missing key spends nothing more
        if spec is None or not plan.keyed:
            if spec is not None:
                request[route_spec_key] = spec
            return await handler(request)
        request[route_spec_key] = spec
        try:
            principal = await self.auth.authenticate(request, spec, key)
        except Unauthorized:
            if ip_windows:
                await self._ip_limits.spend(ip_windows)
            raise
        request[principal_key] = principal
        usage.key_id, usage.tenant = principal.key_id, principal.tenant
        self.auth.check_scope(request, spec, principal)
        if plan.rate_limited:
            await self._rate_limits.check(request, principal, spec.route_class, ip)
        if not (plan.budgeted and principal.budget_tokens):
            return await handler(request)
        budget = self._budgets.windows(principal)
        await self._budgets.check(budget)
        try:
            return await handler(request)
        finally:
            await self._budgets.charge(budget, usage)


pipeline_key = web.AppKey("pipeline", Pipeline)
