"""The dashboard in a real browser: Debian's chromium, driven by selenium through Debian's chromedriver
(nothing downloads a browser or a driver). One owner logs in, adds an SMTP pool and tests it (latency
shown), creates an alias (verified through the link of the email it gets) and an API key (read once from
the page), sends a message over SMTP with that key, and finds it delivered on the messages page.

A screenshot of every page is saved under the test's temporary directory (and one at phone width)."""

from __future__ import annotations

import asyncio
import email
import email.policy
import os
import re
import shutil
import smtplib
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import port_of

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
PASSWORD = "correct horse battery"
OWNER = "owner@example.com"

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (the test extra)")
pytestmark = pytest.mark.skipif(
    not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)),
    reason=f"Debian's chromium and chromium-driver are not installed ({CHROMIUM}, {CHROMEDRIVER}): "
           "apt-get install chromium chromium-driver")


def start_browser(width: int = 1280, height: int = 1400) -> Any:
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={width},{height}", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # the system driver, given by path: selenium-manager is never asked for one
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


class Pages:
    """The browser with the test's base URL and screenshot directory."""

    def __init__(self, driver: Any, base: str, shots: Path) -> None:
        self.d, self.base, self.shots = driver, base, shots
        self.taken: list[str] = []

    def open(self, path: str) -> None:
        self.d.get(self.base + path)

    def shot(self, name: str) -> None:
        self.d.save_screenshot(str(self.shots / f"{len(self.taken):02d}-{name}.png"))
        self.taken.append(name)

    def css(self, selector: str) -> Any:
        from selenium.webdriver.common.by import By
        return self.d.find_element(By.CSS_SELECTOR, selector)

    def fill(self, form: str, **fields: str) -> None:
        for name, value in fields.items():
            box = self.css(f'{form} [name="{name}"]')
            if box.tag_name == "select":
                from selenium.webdriver.support.ui import Select
                Select(box).select_by_value(value)
            else:
                box.clear()
                box.send_keys(value)

    def submit(self, form: str) -> None:
        self.css(f'{form} button[type="submit"]').click()

    def until(self, check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
        end = time.monotonic() + timeout
        while not self._safely(check):
            if time.monotonic() > end:
                raise AssertionError(f"{what}: not seen in time on {self.d.current_url}:\n{self.text()[:2000]}")
            time.sleep(0.2)

    @staticmethod
    def _safely(check: Callable[[], bool]) -> bool:
        from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
        try:
            return check()
        except (NoSuchElementException, StaleElementReferenceException):
            return False  # the page is being replaced

    def text(self) -> str:
        return str(self.css("body").text)

    def reload_until(self, path: str, check: Callable[[str], bool], what: str) -> None:
        def again() -> bool:
            self.open(path)
            return check(self.text())
        self.until(again, what, timeout=30)


def verification_link(received: list[Any], alias: str) -> str:
    """The link in the verification email the alias got (through the operator's pool, to the sink)."""
    for r in received:
        if alias in r.rcpt_tos:
            msg = email.message_from_bytes(r.data, policy=email.policy.default)
            for part in msg.walk():
                if part.get_content_maintype() == "text":
                    found = re.search(r"https?://\S+?/api/v1/aliases/verify/[A-Za-z0-9_-]+", part.get_content())
                    if found:
                        return found.group(0)
    return ""


def send_over_smtp(port: int, key: str, subject: str) -> None:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the gateway's self-signed test certificate
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as smtp:
        smtp.starttls(context=context)
        smtp.login("apikey", key)
        smtp.sendmail("app@example.com", ["someone@dest.org"],
                      f"From: App <app@example.com>\r\nTo: someone@dest.org\r\nSubject: {subject}\r\n\r\nHello.\r\n")


def more_pages(p: Pages) -> None:
    """The pages behind the lists: an SMTP pool's form, a webhook's deliveries, a user's one-time link."""
    p.open("/smtp-pools")
    p.css("td a[href^='/smtp-pools/']").click()
    p.until(lambda: "Test connection" in p.text(), "the SMTP pool's form")
    p.shot("smtp-pool-edit")
    p.open("/webhooks")
    p.fill('form[action="/webhooks"]', url="http://127.0.0.1:9/hook", description="billing app")
    p.submit('form[action="/webhooks"]')
    p.until(lambda: "Signing secret" in p.text(), "the new webhook")
    assert p.css("#secret").text.startswith("whsec_")
    p.shot("webhooks-created")
    p.css("td a[href^='/webhooks/']").click()
    p.until(lambda: "Deliveries" in p.text(), "the webhook's deliveries")
    p.shot("webhook-deliveries")
    p.open("/users")
    p.fill('form[action="/users"]', email="member@example.com")
    p.submit('form[action="/users"]')
    p.until(lambda: "One-time link" in p.text(), "the new user's link")
    link = p.css("#link").text.strip()
    p.shot("users-added")
    p.d.get(link)
    p.until(lambda: "Set your password" in p.text(), "the set-password page")
    p.shot("set-password")


def scenario(p: Pages, sink: Any, submission: int) -> dict[str, Any]:
    """What a person does, page by page (blocking: run in a thread while the gateway serves)."""
    p.open("/")
    assert p.d.current_url.endswith("/login")
    p.shot("login")
    p.fill("form", email=OWNER, password=PASSWORD)
    p.submit("form")
    p.until(lambda: p.d.current_url == p.base + "/", "the overview after login")
    p.shot("overview")

    p.open("/smtp-pools")
    form = 'form[action="/smtp-pools"]'
    p.fill(form, name="acme sink", host="127.0.0.1", port=str(sink.port), ip_pool="acme")
    p.fill(form, encryption="none")
    p.submit(form)
    p.until(lambda: "SMTP pool added." in p.text(), "the new SMTP pool")
    p.css('form[action$="/test"] button').click()
    p.until(lambda: "latency" in p.text(), "the test result")
    result = p.css("#test-result").text
    latency = int(re.search(r"latency (\d+) ms", result).group(1))
    p.shot("smtp-pools-tested")

    p.open("/aliases")
    form = 'form[action="/aliases"]'
    p.fill(form, email="app@example.com", name="App", ip_pool="acme")
    p.submit(form)
    p.until(lambda: "Alias created" in p.text(), "the new alias")
    p.shot("aliases-new")
    p.until(lambda: bool(verification_link(sink.received, "app@example.com")), "the verification email")
    p.d.get(verification_link(sink.received, "app@example.com"))
    p.submit("form")
    p.until(lambda: "is verified" in p.text(), "the verified alias")
    p.open("/aliases")
    assert "verified" in p.text()
    p.shot("aliases")

    p.open("/keys")
    p.fill('form[action="/keys"]', name="browser test")
    p.submit('form[action="/keys"]')
    p.until(lambda: "Your new key" in p.text(), "the new key")
    key = p.css("#new-key").text.strip()
    p.shot("keys-created")
    p.open("/keys")
    assert key not in p.d.page_source  # shown once

    send_over_smtp(submission, key, "Sent from the browser test")
    p.reload_until("/messages?q=browser+test", lambda t: "delivered" in t, "the delivered message")
    p.shot("messages")
    p.css("td a[href^='/messages/msg_']").click()
    p.until(lambda: "Headers" in p.text(), "the message page")
    assert "someone@dest.org" in p.text() and "delivered" in p.text() and "DKIM-Signature" in p.text()
    p.shot("message")

    for path in ("/domains", "/suppressions", "/webhooks", "/usage", "/users", "/"):
        p.open(path)
        assert "Relay" in p.d.title
        p.shot(path.strip("/") or "overview-after")
    more_pages(p)
    p.open("/domains")
    p.css("td a[href^='/domains/']").click()
    p.until(lambda: "DNS records to publish" in p.text(), "the domain page")
    p.shot("domain")

    p.d.set_window_size(390, 844)  # a phone
    for path in ("/", "/messages"):
        p.open(path)
        p.shot("phone" + path.replace("/", "-"))
    wide = p.d.execute_script("return document.documentElement.scrollWidth")
    p.d.set_window_size(1280, 1400)

    console = [e["message"] for e in p.d.get_log("browser")]
    p.open("/")
    p.css('form[action="/logout"] button').click()
    p.until(lambda: p.d.current_url.endswith("/login?done=out"), "the signed-out page")
    return {"latency": latency, "console": console, "phone_width": wide}


async def test_an_owner_sets_up_sending_and_finds_a_message_delivered(gateway_factory, sink_factory, tmp_path,
                                                                     monkeypatch):
    monkeypatch.setenv("SE_OFFLINE", "true")  # selenium-manager (if anything asked it) must not download
    sink = await sink_factory()
    gw = await gateway_factory()
    admin = gw.admin
    admin.create_account("acme")
    admin.add_domain("example.com", "acme")
    admin.verify_domain("example.com", trust=True)
    # the operator's pool carries system mail (the alias verification email) to the sink
    admin.add_upstream(name="system", ip_pool="default", host="127.0.0.1", port=sink.port, encryption="none")
    gw.load_upstreams()
    await gw.users.add("acme", OWNER, "owner", PASSWORD)

    shots = tmp_path / "screenshots"
    shots.mkdir()
    driver = await asyncio.to_thread(start_browser)
    try:
        pages = Pages(driver, "http://" + gw.settings.api.listen, shots)
        out = await asyncio.to_thread(scenario, pages, sink, port_of(gw, "submission"))
    finally:
        await asyncio.to_thread(driver.quit)
    assert out["latency"] >= 0
    assert not [line for line in out["console"] if "Content Security Policy" in line or "Refused" in line]
    assert out["phone_width"] <= 390 + 1, "the page scrolls sideways at phone width"
    assert len(list(shots.glob("*.png"))) == len(pages.taken) >= 20
    if os.environ.get("RELAY_KEEP_SCREENSHOTS"):  # to look at them: a directory outside the repository
        shutil.copytree(shots, os.environ["RELAY_KEEP_SCREENSHOTS"], dirs_exist_ok=True)
