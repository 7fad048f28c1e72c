"""The admin console in a real headless Chromium, driven by Playwright."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path
from typing import Any

import openai

from gateway.admin.console import CONSOLE_CSP
from gateway.app import create_app
from tests.conftest import ADMIN_KEY, USER_KEY, make_config, skip_or_fail
from tests.fake_providers import UPSTREAM_KEY, FakeProvider

ROOT = Path(__file__).resolve().parent.parent
SCREENS = ROOT / "bench" / "screens"
XSS_NAME = "<img src=x onerror=alert(1)>"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


def chromium_path() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        skip_or_fail("chromium (Debian package chromium) is not installed")
    try:
        import playwright  # noqa: F401
    except ImportError:
        skip_or_fail("playwright (Python) is not installed")
    return str(found)


async def test_console_is_off_by_default(aiohttp_client: Any) -> None:
    client = await aiohttp_client(create_app(make_config()))
    assert (await client.get("/console/")).status == 404


async def test_console_files_carry_a_strict_policy(aiohttp_client: Any, tmp_path: Path) -> None:
    config = make_config({"server": {"console": True}, "state": f"sqlite:///{tmp_path / 's.db'}"})
    client = await aiohttp_client(create_app(config))
    for path in ("/console/", "/console/console.js", "/console/console.css"):
        response = await client.get(path)
        assert response.status == 200
        assert response.headers["Content-Security-Policy"] == CONSOLE_CSP
        assert response.headers["X-Frame-Options"] == "DENY"
    script = await (await client.get("/console/console.js")).text()
    assert "innerHTML" not in script and "eval(" not in script
    page = await (await client.get("/console/")).text()
    assert "<script>" not in page and "style=" not in page  # nothing inline for the CSP to allow
    assert (await client.get("/console/../gateway/app.py")).status == 404


async def test_console_end_to_end_in_chromium(
    aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path
) -> None:
    from playwright.async_api import async_playwright

    executable = chromium_path()
    provider = FakeProvider()
    upstream = await aiohttp_server(provider.app())
    config = make_config(
        {
            "server": {"console": True},
            "state": f"sqlite:///{tmp_path / 'state.db'}",
            "state_spill_dir": str(tmp_path / "spill"),
            "backends": {"openai": {"type": "openai", "base_url": str(upstream.make_url("/v1")),
                                    "api_key": UPSTREAM_KEY}},
            "models": {"gpt-4o-mini": {"backend": "openai"}},
        }
    )  # fmt: skip
    client = await aiohttp_client(create_app(config))
    base = str(client.make_url("")).rstrip("/")
    SCREENS.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []
    dialogs: list[str] = []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        page = await browser.new_page(viewport={"width": 1280, "height": 800})
        page.on(
            "console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None
        )
        page.on("pageerror", lambda e: problems.append(str(e)))

        async def on_dialog(dialog: Any) -> None:
            dialogs.append(dialog.message)
            await dialog.dismiss()

        page.on("dialog", on_dialog)
        await page.goto(f"{base}/console/")

        # A key without the admin scope is told so.
        await page.fill("#admin-key", USER_KEY)
        await page.click("#sign-in-form button")
        await page.wait_for_selector("#sign-in-error:has-text('not an admin key')")
        assert all("status of 403" in p for p in problems)  # the refused sign-in's own request
        problems.clear()

        await page.fill("#admin-key", ADMIN_KEY)
        await page.click("#sign-in-form button")
        await page.wait_for_selector("#keys:not([hidden])")
        await page.fill("#create-form input[name=tenant]", "acme")
        await page.fill("#create-form input[name=name]", XSS_NAME)
        await page.click("#create-form button[type=submit]")
        await page.wait_for_selector("#new-key:not([hidden])")
        secret = (await page.text_content("#new-key-value") or "").strip()
        assert secret.startswith("tw_")
        row = page.locator("#keys-table tbody tr", has_text="acme").filter(has_text=XSS_NAME)
        assert await row.count() == 1  # the markup is text in the table
        key_id = await row.get_attribute("data-id")
        await page.screenshot(path=str(SCREENS / "keys-1280.png"))

        api = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key=secret, max_retries=0)
        for _ in range(3):
            await api.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
            )

        await page.click("#tabs [data-tab=usage]")
        await page.select_option("#usage-form select[name=group]", "key")
        deadline = time.monotonic() + 10
        while True:
            await page.click("#usage-form button[type=submit]")
            await page.wait_for_timeout(300)
            row = page.locator("#usage-table tbody tr", has_text=key_id or "")
            if await row.count():
                cells = await row.first.locator("td").all_text_contents()
                if int(cells[2]) == 3:  # day, key, requests
                    break
            assert time.monotonic() < deadline, "the key's requests never showed in the usage table"
        assert await page.locator("#usage-chart svg rect").count() >= 1
        await page.screenshot(path=str(SCREENS / "usage-1280.png"))

        await page.click("#tabs [data-tab=keys]")
        revoke = page.locator(f"#keys-table tbody tr[data-id='{key_id}'] button.revoke")
        await revoke.click()
        await revoke.click()  # confirm
        await page.wait_for_selector(
            f"#keys-table tbody tr[data-id='{key_id}']:has-text('revoked')"
        )
        revoked_at = time.monotonic()
        while True:
            try:
                await api.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
                )
            except openai.AuthenticationError:
                break
            assert time.monotonic() - revoked_at < 1.0, (
                "the revoked key still worked after a second"
            )
            await asyncio.sleep(0.05)

        await page.click("#tabs [data-tab=audit]")
        await page.wait_for_selector("#audit-table tbody tr")
        await page.fill("#audit-form input[name=key_id]", key_id or "")
        await page.click("#audit-form button[type=submit]")
        await page.wait_for_timeout(300)
        actions = await page.locator("#audit-table tbody tr td:nth-child(2)").all_text_contents()
        assert {"key.create", "key.revoke", "auth.revoked"} <= set(actions)
        await page.screenshot(path=str(SCREENS / "audit-1280.png"))

        await page.click("#tabs [data-tab=health]")
        await page.wait_for_selector("#health-table tbody tr:has-text('openai')")
        await page.screenshot(path=str(SCREENS / "health-1280.png"))

        await page.set_viewport_size({"width": 390, "height": 844})
        for tab in ("keys", "usage", "audit", "health"):
            await page.click(f"#tabs [data-tab={tab}]")
            await page.wait_for_timeout(200)
            await page.screenshot(path=str(SCREENS / f"{tab}-390.png"))
        await browser.close()
    assert dialogs == []  # the key name's onerror never ran
    assert problems == [], problems


async def test_before_sign_in_only_the_form_shows_and_the_keys_table_fits_a_phone(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    from playwright.async_api import async_playwright

    executable = chromium_path()
    config = make_config({"server": {"console": True}, "state": f"sqlite:///{tmp_path / 's.db'}"})
    client = await aiohttp_client(create_app(config))
    base = str(client.make_url("")).rstrip("/")
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        page = await browser.new_page(viewport={"width": 390, "height": 844})
        await page.goto(f"{base}/console/")
        await page.wait_for_selector("#sign-in-form")
        assert await page.is_visible("#sign-in-form")
        for hidden in ("#tabs", "#tabs [data-tab=keys]", "#sign-out", "#keys", "#usage",
                       "#audit", "#health"):  # fmt: skip
            assert not await page.is_visible(hidden), hidden
        await page.fill("#admin-key", ADMIN_KEY)
        await page.click("#sign-in-form button")
        await page.wait_for_selector("#keys-table tbody tr")
        assert await page.is_visible("#tabs [data-tab=keys]")
        rows = page.locator("#keys-table tbody tr")
        assert await rows.count() >= 3
        for index in range(await rows.count()):
            for label in ("State", "Actions"):
                cell = rows.nth(index).locator(f"td[data-label={label}]")
                box = await cell.bounding_box()
                assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390, (
                    index, label, box,
                )  # fmt: skip
        revoke = rows.first.locator("button.revoke")
        revoke_box = await revoke.bounding_box()
        assert revoke_box is not None and revoke_box["x"] + revoke_box["width"] <= 390
        overflow = await page.evaluate(
            "() => { const s = document.querySelector('#keys .scroll');"
            " return s.scrollWidth - s.clientWidth; }"
        )
        assert overflow <= 0  # nothing to swipe to
        await page.screenshot(path=str(SCREENS / "keys-390-stacked.png"), full_page=True)
        await browser.close()


def test_the_embedded_default_serves_the_console_and_prints_its_url(
    tmp_path: Path, unused_tcp_port: int
) -> None:
    import os
    import signal
    import subprocess
    import sys
    import urllib.request

    env = {**os.environ, "TOLLWAY_PORT": str(unused_tcp_port), "PYTHONPATH": os.getcwd()}
    env.pop("TOLLWAY_CONFIG", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve"], cwd=tmp_path, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{unused_tcp_port}/console/"
        deadline = time.monotonic() + 15
        while True:
            try:
                with urllib.request.urlopen(url, timeout=1) as response:
                    assert response.status == 200
                    assert b"sign-in-form" in response.read()
                    break
            except OSError:
                assert time.monotonic() < deadline, "the console never answered"
                time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
    lines = output.splitlines()
    demo = next(i for i, line in enumerate(lines) if line.startswith("Demo key"))
    assert lines[demo + 1] == f"Admin console: {url} (sign in with the demo key)"
