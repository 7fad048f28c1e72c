"""What a breaker per (backend, model) costs a call, against the backend's breaker alone.

Every LLM call passes two breakers (the model's and the backend's); a call made without
a model (SQL, search) passes the backend's only, as every call did before breakers were
kept per model. Both run here through the guard's `attempt()` in one process, alternating,
with the breakers closed (the hot path) and, for the per-model case, 50 configured models
so the lookup is a real dictionary's. Printed: nanoseconds per call and the ratio.

    python -m bench breakers [--calls N] [--rounds R]
"""

from __future__ import annotations

import argparse
import asyncio
import time

from gateway.config import BackendConfig
from gateway.ops.metrics import Metrics
from gateway.resilience.guard import Guard


async def _per_call_ns(guard: Guard[object], model: str | None, calls: int) -> float:
    attempt = guard.attempt
    started = time.perf_counter()
    for _ in range(calls):
        async with attempt(model):
            pass
    return (time.perf_counter() - started) / calls * 1e9


async def run(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench breakers")
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    config = BackendConfig(name="openai", type="openai", timeout_s=120)
    models = [f"model-{index}" for index in range(50)]
    guard: Guard[object] = Guard(object(), config, Metrics(), models=models)
    backend_only, per_model = [], []
    for _ in range(args.rounds):
        backend_only.append(await _per_call_ns(guard, None, args.calls))
        per_model.append(await _per_call_ns(guard, "model-17", args.calls))
    base, each = min(backend_only), min(per_model)
    print(f"{args.rounds} rounds x {args.calls} calls through Guard.attempt(), best round")
    print(f"backend breaker only            {base:8.0f} ns/call")
    print(f"model breaker + backend breaker {each:8.0f} ns/call")
    print(f"per-model/backend-only: {each / base:.2f}x")


if __name__ == "__main__":
    asyncio.run(run([]))
