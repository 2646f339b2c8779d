"""The web app in a real browser: Debian's chromium driven by Playwright, against the app
served as in production. nginx (nginx/nginx.conf) serves the static export (web/out) and
proxies /api and /objects to a whole Haven on loopback (tests/e2e/conftest.py's stack: the
all-in-one API + worker, emb with MiniLM, llm with the tiny GGUF, one slot and a queue of
one). One stack and one browser per module."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.e2e.conftest import Stack, admin, stack  # noqa: F401 - the fixtures, re-exported
from tests.fixtures.api import PASSWORD, Account
from tests.fixtures.nginx import WEB_OUT, running_nginx
from tests.fixtures.processes import ROOT
from tests.fixtures.services import free_port

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / "var" / "artifacts" / "web"
AXE = ROOT / "web" / "node_modules" / "axe-core" / "axe.min.js"
DESKTOP = {"width": 1280, "height": 860}
PHONE = {"width": 390, "height": 844}

# nginx's port is chosen before the stack starts: the API signs presigned URLs for it.
NGINX_PORT = free_port()
WEB_STACK_ENV = {"HAVEN_S3_PUBLIC_URL": f"http://127.0.0.1:{NGINX_PORT}/objects"}


@pytest.fixture(scope="session")
def web_out() -> Path:
    """The static export, built by `make install` (built here when missing)."""
    if not (WEB_OUT / "chat.html").exists():
        web = ROOT / "web"
        if not (web / "node_modules").exists():
            subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=web, check=True)
        subprocess.run(["npm", "run", "build"], cwd=web, check=True)
    return WEB_OUT


@pytest.fixture(scope="module")
def site(
    stack: Stack,  # noqa: F811
    s3_endpoint: str,
    web_out: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    with running_nginx(
        tmp_path_factory.mktemp("nginx"),
        NGINX_PORT,
        stack.base_url.removeprefix("http://"),
        s3_endpoint.removeprefix("http://"),
        web_out,
    ) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        # Root in a container: chromium's sandbox needs user namespaces it does not get here.
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture()
def page(browser: Browser, site: str) -> Iterator[Page]:
    context = browser.new_context(base_url=site, viewport=DESKTOP)
    context.set_default_timeout(30_000)
    opened = context.new_page()
    try:
        yield opened
    finally:
        context.close()


def sign_in(page: Page, who: Account, path: str = "/chat") -> None:
    page.goto(path)
    page.get_by_label("Username").fill(who.username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_test_id("role").get_by_text(who.role.value, exact=True).wait_for()


def screenshots(page: Page, name: str) -> None:
    """The page at desktop and phone widths, under var/artifacts/web/."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}-desktop.png"), full_page=True)
    page.set_viewport_size(PHONE)
    page.screenshot(path=str(ARTIFACTS / f"{name}-phone.png"), full_page=True)
    # Nothing wider than the phone's screen: no sideways scrolling of the page.
    width = page.evaluate("document.documentElement.scrollWidth")
    page.set_viewport_size(DESKTOP)
    assert width <= PHONE["width"], f"{name} is {width}px wide at phone width"


def serious_accessibility_violations(page: Page) -> list[dict[str, Any]]:
    """axe-core's serious and critical violations on the page as it is now."""
    page.add_script_tag(path=str(AXE))
    found: list[dict[str, Any]] = page.evaluate(
        """async () => (await axe.run(document)).violations
            .filter(v => v.impact === "serious" || v.impact === "critical")
            .map(v => ({id: v.id, impact: v.impact, help: v.help,
                        nodes: v.nodes.slice(0, 5).map(n => n.target.join(" "))}))"""
    )
    if found:
        (ARTIFACTS / "axe.json").write_text(json.dumps(found, indent=2))
    return found


def llm_info(stack: Stack) -> dict[str, Any]:  # noqa: F811
    info: dict[str, Any] = httpx.get(f"{stack.env['HAVEN_LLM_URL']}/info", timeout=5).json()
    return info
