"""A rolling restart behind the real nginx answers every request: each of three replicas
in turn gets SIGTERM while streams and JSON calls flow through nginx, drains without
resetting a connection nginx is about to use, and comes back. (`python -m bench rolling`
repeats this 20 times.)"""

from __future__ import annotations

from pathlib import Path

from bench.rolling import Cluster, nginx_binary, one_run
from tests.conftest import skip_or_fail


async def test_three_replicas_restarted_in_turn_behind_nginx_answer_every_request(
    tmp_path: Path,
) -> None:
    if nginx_binary() is None:
        skip_or_fail("nginx (Debian package nginx) is not installed")
    async with Cluster(tmp_path) as cluster:
        result = await one_run(cluster, clients=8)
    assert result.requests > 100
    assert not result.failures, dict(result.failures)
    assert result.answered == result.requests
    assert all(seconds < 10 for seconds in result.drains_s)
    rows, distinct = cluster.usage()
    assert rows == distinct == result.answered  # every request recorded, exactly once
