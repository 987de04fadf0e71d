"""The dashboard in a real browser: Debian's headless Chromium, driven by selenium through chromium-driver, against a
real node in this process (.ci/run installs both packages; without them these tests are skipped).

The page loads without console errors, shows a queue once a job is submitted and the job's end once it ends; its
layout keeps its structure (tests/e2e/dashboard_layout.json; the screenshot itself goes to the test's tmp dir); an
account key sees its own account only, the operator's token every account, and neither nothing.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from edge.node import Node
from simulations.actors import Receive, Scope, Send, read_body, respond
from tests.e2e.support import ACCOUNT_KEY, OTHER_KEY, auth, serve, start_node

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
    pytest.skip("needs Debian's chromium and chromium-driver (.ci/run installs them)", allow_module_level=True)

OPERATOR_TOKEN = "op_test_0123456789abcdef"
WINDOW = (1280, 1000)
WAIT_S = 15.0  # what the page may take to show a change: its poll is 2 s
LAYOUT_BASELINE = Path(__file__).with_name("dashboard_layout.json")
LAYOUT_TOLERANCE = 0.03  # of the board's width
# Each section of the page by a selector, for the layout's structure.
SECTIONS = {
    "charts": "#charts",
    "queues": "section:has(#queues)",
    "members": "section:has(#members)",
    "usage": "section:has(#usage)",
    "jobs": "section:has(#jobs)",
    "proxy": "#proxy-section",
}
ROWS_JS = (
    "return Array.from(document.querySelectorAll(arguments[0] + ' tbody tr'),"
    " row => Array.from(row.cells, cell => cell.textContent));"
)


class Gate:
    """An upstream that holds every request until `opened` is set, then answers 200."""

    def __init__(self) -> None:
        self.opened = trio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await read_body(receive)
        await self.opened.wait()
        await respond(send, 200, b"{}", [("content-type", "application/json")])


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_argument(f"--window-size={WINDOW[0]},{WINDOW[1]}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver: selenium then never looks for (or downloads) one of its own.
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()


class Page:
    """The dashboard of one node in the browser; every call runs in a thread, so the node keeps serving."""

    def __init__(self, driver: Any, node: Node) -> None:
        self._driver = driver
        self._url = f"{node.base_url}/dashboard"

    async def _run(self, call: Callable[[], Any]) -> Any:
        return await trio.to_thread.run_sync(call)

    async def open(self) -> None:
        await self._run(lambda: self._driver.get(self._url))
        self.console_errors_before = await self.console_errors()

    async def js(self, script: str, *args: Any) -> Any:
        return await self._run(lambda: self._driver.execute_script(script, *args))

    async def sign_in(self, credential: str) -> None:
        await self.js(
            "document.getElementById('credential').value = arguments[0];"
            "document.querySelector('#sign-in button').click();",
            credential,
        )

    async def wait_for(self, script: str, *args: Any) -> Any:
        """Until `script` returns something truthy; returns it."""
        with trio.fail_after(WAIT_S):
            while not (found := await self.js(script, *args)):
                await trio.sleep(0.1)
        return found

    async def rows(self, table: str) -> list[list[str]]:
        """The text of each cell, row by row."""
        return list(await self.js(ROWS_JS, table))

    async def wait_for_row(self, table: str, *parts: str) -> str:
        """Until a row of `table` holds every one of `parts`; that row's cells, joined by " | "."""
        with trio.fail_after(WAIT_S):
            while True:
                for cells in await self.rows(table):
                    row = " | ".join(cells)
                    if all(part in row for part in parts):
                        return row
                await trio.sleep(0.1)

    async def console_errors(self) -> list[str]:
        entries = await self._run(lambda: self._driver.get_log("browser"))
        return [entry["message"] for entry in entries if entry["level"] == "SEVERE"]

    async def screenshot(self, path: Path) -> None:
        await self._run(lambda: self._driver.save_screenshot(str(path)))


async def dashboard_node(nursery: trio.Nursery, tmp_path: Path) -> Node:
    token_sha256 = hashlib.sha256(OPERATOR_TOKEN.encode()).hexdigest()
    return await start_node(nursery, tmp_path, server_extra=f'admin_token_sha256 = "{token_sha256}"\n')


async def submit(node: Node, url: str, key: str = ACCOUNT_KEY) -> str:
    async with httpx.AsyncClient(base_url=node.base_url) as client:
        answer = await client.post("/api/v1/jobs", json={"url": url}, headers=auth(key))
    assert answer.status_code == 201, answer.text
    return str(answer.json()["job_id"])


async def test_the_page_shows_a_queue_and_the_job_that_finishes_without_console_errors(
    nursery: trio.Nursery, tmp_path: Path, browser: Any
):
    gate = Gate()
    upstream = await serve(nursery, gate)
    node = await dashboard_node(nursery, tmp_path)
    page = Page(browser, node)
    await page.open()
    assert await page.js("return !document.getElementById('sign-in').hidden")  # no credential yet: it asks
    await page.sign_in(ACCOUNT_KEY)
    await page.wait_for("return !document.getElementById('board').hidden")
    assert await page.js("return document.getElementById('scope').textContent") == "account acme"

    job_id = await submit(node, f"{upstream}/charge")
    origin = upstream.removeprefix("http://")
    queue = await page.wait_for_row("#queues", origin, "2.00/s (default)", "2 (default)")
    assert queue.endswith("| no")  # not blocked
    await page.wait_for_row("#jobs", job_id, "running")
    gate.opened.set()
    done = await page.wait_for_row("#jobs", job_id, "success")
    assert "owner 200 won" in done
    await page.wait_for("return document.getElementById('rate-legend').children.length === 3")
    assert page.console_errors_before == [] and await page.console_errors() == []


async def test_the_layout_keeps_its_structure(nursery: trio.Nursery, tmp_path: Path, browser: Any):
    upstream = await serve(nursery, Gate())
    node = await dashboard_node(nursery, tmp_path)
    await submit(node, f"{upstream}/charge")
    page = Page(browser, node)
    await page.open()
    await page.sign_in(OPERATOR_TOKEN)
    await page.wait_for_row("#queues", upstream.removeprefix("http://"))
    boxes = await page.js(
        "const board = document.getElementById('board').getBoundingClientRect();"
        "return Object.fromEntries(Object.entries(arguments[0]).map(([name, selector]) => {"
        "  const box = document.querySelector(selector).getBoundingClientRect();"
        "  return [name, {left: (box.left - board.left) / board.width, width: box.width / board.width, top: box.top}];"
        "}));",
        SECTIONS,
    )
    order = sorted(SECTIONS, key=lambda name: (round(boxes[name]["top"]), boxes[name]["left"]))
    measured = {
        "order": order,
        "boxes": {name: [round(boxes[name]["left"], 2), round(boxes[name]["width"], 2)] for name in order},
    }
    baseline = json.loads(LAYOUT_BASELINE.read_text())
    assert measured["order"] == baseline["order"], measured
    for name, (left, width) in baseline["boxes"].items():
        got_left, got_width = measured["boxes"][name]
        assert abs(got_left - left) <= LAYOUT_TOLERANCE and abs(got_width - width) <= LAYOUT_TOLERANCE, measured
    assert boxes["members"]["top"] == boxes["usage"]["top"]  # side by side
    # The charts are drawn: some of each canvas's pixels are painted.
    painted = await page.js(
        "return Array.from(document.querySelectorAll('canvas'), canvas => {"
        "  const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;"
        "  let count = 0; for (let i = 3; i < data.length; i += 4) if (data[i]) count++; return count; });"
    )
    assert len(painted) == 2 and min(painted) > 500, painted
    screenshot = tmp_path / "dashboard.png"
    await page.screenshot(screenshot)
    width, height = struct.unpack(">II", screenshot.read_bytes()[16:24])  # the PNG's IHDR
    assert (width, height) == (WINDOW[0], await page.js("return window.innerHeight")), (width, height)
    shutil.copy(screenshot, tmp_path.parent / "dashboard-latest.png")  # for a person to look at, outside git
    assert await page.console_errors() == []


async def test_an_account_sees_its_own_the_operator_everything_and_nobody_else_anything(
    nursery: trio.Nursery, tmp_path: Path, browser: Any
):
    gate = Gate()
    gate.opened.set()
    upstream = await serve(nursery, gate)
    node = await dashboard_node(nursery, tmp_path)
    acme_job, other_job = await submit(node, f"{upstream}/a"), await submit(node, f"{upstream}/b", OTHER_KEY)
    page = Page(browser, node)

    await page.open()
    await page.sign_in(OPERATOR_TOKEN)
    await page.wait_for_row("#jobs", acme_job, "success")
    await page.wait_for_row("#jobs", other_job, "success")
    assert [cells[0] for cells in await page.rows("#usage")] == ["acme", "other"]
    assert await page.js("return !document.getElementById('proxy-section').hidden")
    assert await page.js("return sessionStorage.length === 1 && localStorage.length === 0")
    assert OPERATOR_TOKEN not in await page.js("return location.href")

    await page.js("document.getElementById('sign-out').click()")
    await page.sign_in(ACCOUNT_KEY)
    await page.wait_for("return document.getElementById('scope').textContent === 'account acme'")
    await page.wait_for_row("#jobs", acme_job, "success")
    assert not any(other_job in cells for cells in await page.rows("#jobs"))
    assert [cells[0] for cells in await page.rows("#usage")] == ["acme"]
    assert await page.js("return document.getElementById('proxy-section').hidden")
    assert await page.console_errors() == []

    await page.js("document.getElementById('sign-out').click()")
    await page.sign_in("not-a-key")
    message = await page.wait_for("return document.getElementById('sign-in-error').textContent")
    assert "no such account key or operator token" in message
    assert await page.js("return document.getElementById('board').hidden && sessionStorage.length === 0")
    errors = await page.console_errors()
    assert errors and all("401" in error for error in errors), errors  # the refused poll, and nothing else
    async with httpx.AsyncClient(base_url=node.base_url) as client:
        assert (await client.get("/dashboard")).status_code == 200  # the page loads for anyone; its data does not
        for headers in ({}, auth("not-a-key"), {"Authorization": f"Basic {OPERATOR_TOKEN}"}):
            refused = await client.get("/api/v1/dashboard", headers=headers)
            assert refused.status_code == 401, headers
