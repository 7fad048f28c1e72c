"""An audio upload is streamed, not held: a 10 MB file transcribed through a Tollway
process whose resident memory grows by less than 5 MB while the upload passes."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import openai
import yaml

from gateway.config.keyhash import hash_key
from tests.conftest import USER_KEY
from tests.fake_openai_surface import TRANSCRIPT
from tests.fake_providers import UPSTREAM_KEY, FakeProvider
from tests.services import free_port

TEN_MB = os.urandom(1024 * 1024) * 10


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def test_a_10_mb_upload_grows_tollways_memory_by_less_than_5_mb(
    fake: FakeProvider, tmp_path: Path
) -> None:
    port = free_port()
    config = {
        "server": {"host": "127.0.0.1", "port": port, "log_level": "warning"},
        "state": f"sqlite:///{tmp_path / 'state.db'}",
        "state_spill_dir": str(tmp_path / "spill"),
        "backends": {
            "openai": {"type": "openai", "base_url": f"{fake.url}/v1", "api_key": UPSTREAM_KEY}  # type: ignore[attr-defined]
        },
        "models": {"whisper-1": {"backend": "openai"}},
        "keys": [{"id": "app", "hash": hash_key(USER_KEY), "tenant": "acme", "scopes": ["llm"]}],
    }
    path = tmp_path / "tollway.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLWAY_")}
    process = subprocess.Popen(  # noqa: ASYNC220 - a server for the test, not awaited
        [sys.executable, "-m", "gateway", "serve", "--config", str(path)],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": os.getcwd()},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = openai.AsyncOpenAI(
        base_url=f"http://127.0.0.1:{port}/v1", api_key=USER_KEY, max_retries=0, timeout=60
    )
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(200):
                try:
                    async with session.get(f"http://127.0.0.1:{port}/health/ready") as ready:
                        if ready.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
        for _ in range(2):  # warm up every code path the upload takes
            await client.audio.transcriptions.create(
                file=("a.wav", TEN_MB[:2_000_000]), model="whisper-1"
            )
        await asyncio.sleep(0.3)
        baseline = _rss_bytes(process.pid)
        peak = baseline
        done = asyncio.Event()

        async def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, _rss_bytes(process.pid))
                await asyncio.sleep(0.002)

        sampler = asyncio.ensure_future(sample())
        started = time.monotonic()
        answer = await client.audio.transcriptions.create(
            file=("big.wav", TEN_MB), model="whisper-1"
        )
        done.set()
        await sampler
        assert answer.text == TRANSCRIPT
        upload = fake.uploads[-1]
        assert upload["file_bytes"] == len(TEN_MB)
        assert upload["file_sha256"] == hashlib.sha256(TEN_MB).hexdigest()
        growth = peak - baseline
        took = time.monotonic() - started
        print(f"RSS {baseline / 2**20:.1f} MiB, +{growth / 2**20:.2f} MiB over {took:.2f}s")
        assert growth < 5 * 1024 * 1024
    finally:
        await client.close()
        process.terminate()
        process.wait(10)
