"""A preview grant opened in headless Chromium (Playwright, the system
browser): the one-time URL lands on the page, the grant's cookie is
HttpOnly (the page's script cannot read it) yet the page's own same-origin
requests carry it, and the spent URL does not open a second time.

usage: browser.py   (configured by the environment)
  PREVIEW_URL            the grant's one-time URL
  PREVIEW_TARGET         the grant's clean target URL
  PREVIEW_MARKER         text the served page holds
  SANDSTONE_TEST_OUTPUT  a screenshot goes to <this>/previews/preview.png
  CHROMIUM               the browser (default /usr/bin/chromium)

Chromium sends every *.localhost name to loopback, as the daemon's default
exposure origin expects. Prints "preview browser: ok" when every check
passed; any failed check raises.
"""
import os

from playwright.sync_api import sync_playwright

URL = os.environ["PREVIEW_URL"]
TARGET = os.environ["PREVIEW_TARGET"]
MARKER = os.environ["PREVIEW_MARKER"]
OUT = os.path.join(os.environ.get("SANDSTONE_TEST_OUTPUT", "/tmp"), "previews")
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
os.makedirs(OUT, exist_ok=True)

with sync_playwright() as p:
    browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
    page = browser.new_context().new_page()
    page.set_default_timeout(20000)
    resp = page.goto(URL)
    assert resp is not None and resp.status == 200, resp and resp.status
    assert page.url == TARGET, (page.url, TARGET)
    assert MARKER in page.content(), page.content()
    assert "sandstone_preview" not in page.evaluate("document.cookie")
    status = page.evaluate("fetch('/index.html').then(r => r.status)")
    assert status == 200, status
    page.screenshot(path=os.path.join(OUT, "preview.png"))
    # The one-time URL again, in a fresh browser context: refused.
    again = browser.new_context().new_page().goto(URL)
    assert again is not None and again.status == 403, again and again.status
    browser.close()
print("preview browser: ok")
