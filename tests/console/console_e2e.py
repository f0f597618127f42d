"""The web console end to end, in headless Chromium, against a real daemon.

usage: console_e2e.py   (configured by the environment)
  SANDSTONE_URL          the daemon, e.g. http://127.0.0.1:7790
  SANDSTONE_TOKEN        an admin API key
  SANDSTONE_TEST_OUTPUT  screenshots go to <this>/console/<page>[-phone].png
  CHROMIUM               the browser (default /usr/bin/chromium)

The daemon must have egress on (network policy and the audit are real) and
an agent loop whose model serves the `ask` script (tests/fake_model), as
crates/sandstone/tests/console.rs starts it. Prints "console e2e: ok" when
every check passed; any failed check raises.
"""
import json
import os
import re
import secrets
import sys
import time
import urllib.error
import urllib.request

from playwright.sync_api import expect, sync_playwright

URL = os.environ["SANDSTONE_URL"].rstrip("/")
TOKEN = os.environ["SANDSTONE_TOKEN"].strip()
OUT = os.path.join(os.environ.get("SANDSTONE_TEST_OUTPUT", "/tmp"), "console")
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
BETA = "managed-agents-2026-04-01"
os.makedirs(OUT, exist_ok=True)


def call(method, path, body=None, raw=None):
    """The daemon's API, as any client calls it: (status, parsed body)."""
    headers = {"authorization": f"Bearer {TOKEN}"}
    data = raw
    if body is not None:
        data = json.dumps(body).encode()
        headers["content-type"] = "application/json"
    if path.startswith("/v1/"):
        headers["anthropic-version"] = "2023-06-01"
        headers["anthropic-beta"] = BETA
    req = urllib.request.Request(URL + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            status, text = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read()
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


def ok(method, path, body=None, raw=None):
    status, v = call(method, path, body, raw)
    assert 200 <= status < 300, f"{method} {path}: {status} {v}"
    return v.get("data", v) if isinstance(v, dict) and "success" in v else v


def step(name):
    print(f"-- {name}", flush=True)


def no_secret(page):
    """Nothing on the page, markup or field values, holds the admin key."""
    shown = page.evaluate(
        "() => document.documentElement.outerHTML + [...document.querySelectorAll('input,textarea')].map(e => e.value).join(' ')"
    )
    assert TOKEN not in shown, f"the API key is on the page at {page.url}"


def shot(page, name):
    no_secret(page)
    # Passing notices would hide the page; errors stay in the picture.
    page.evaluate("() => document.querySelectorAll('.toast.notice').forEach((t) => t.remove())")
    page.wait_for_timeout(300)
    page.screenshot(path=os.path.join(OUT, f"{name}.png"))


def fake_sandbox(i, status="running"):
    return {
        "id": f"sb-fake{i:04d}", "template_id": "host", "status": status, "paused": status == "paused",
        "runtime_generation": 1, "metadata": {"n": str(i)}, "disk_bytes": 4096,
        "resources": {"memory": f"{i}Mi"}, "network_enabled": i % 2 == 0,
        "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z",
    }


def windowed(browser):
    """The list with 1,000 sandboxes, served in place of the daemon's list
    (the rows' behaviour, not the daemon, is under test here)."""
    n = 1000
    fakes = [fake_sandbox(i) for i in range(n)]
    ctx = browser.new_context(viewport={"width": 1280, "height": 800})
    ctx.add_init_script(f"sessionStorage.setItem('sandstone.key', {json.dumps(TOKEN)})")
    page = ctx.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.set_default_timeout(20000)
    served = {"lists": 0}

    def serve_list(route):
        served["lists"] += 1
        body = {"success": True, "data": {"sandboxes": fakes, "count": n, "has_more": False}}
        route.fulfill(status=200, content_type="application/json", body=json.dumps(body))

    page.route(re.compile(r"/api/v1/sandboxes\?"), serve_list)
    page.goto(URL + "/")
    page.wait_for_selector("body[data-ready=sandboxes]")
    rows = page.locator("#sb-rows tr")
    expect(page.locator("#sb-count")).to_have_text(f"{n} of {n}")
    in_dom = rows.count()
    assert 10 < in_dom < 100, f"{in_dom} rows in the DOM for {n} sandboxes"
    assert page.locator("#sb-table").get_attribute("aria-rowcount") == str(n + 1)
    # The spacers stand in for the rest: the page is as tall as every row.
    height = page.evaluate("() => document.querySelector('#sb-table').getBoundingClientRect().height")
    assert height > n * 30, f"the table is {height}px tall for {n} rows"
    # Scrolled to the bottom, the last sandbox is on screen.
    page.evaluate("() => scrollTo(0, document.documentElement.scrollHeight)")
    last = page.locator(f'#sb-rows tr[data-id="sb-fake{n - 1:04d}"]')
    expect(last).to_be_in_viewport()
    expect(last).to_have_attribute("aria-rowindex", str(n + 1))
    assert rows.count() < 100
    page.evaluate("() => scrollTo(0, 0)")
    expect(page.locator('#sb-rows tr[data-id="sb-fake0000"]')).to_be_in_viewport()

    # The keyboard walks the rows down, past those first in the DOM.
    page.locator('#sb-rows tr[data-id="sb-fake0000"] a').focus()
    for _ in range(60):
        page.keyboard.press("ArrowDown")
    focused = page.evaluate("() => document.activeElement.closest('tr')?.dataset.id")
    assert focused == "sb-fake0060", f"focus is on {focused}"
    expect(page.locator('#sb-rows tr[data-id="sb-fake0060"]')).to_be_in_viewport()
    page.keyboard.press("Tab")
    assert page.evaluate("() => document.activeElement.dataset.act") == "pause"

    # A refresh (every 2 s) updates the rows in place: a changed row is
    # rewritten, an unchanged one is the same element, the focus stays.
    page.evaluate("() => (document.querySelector('#sb-rows tr[data-id=sb-fake0061]').__kept = true)")
    fakes[60] = fake_sandbox(60, "paused")
    expect(page.locator('#sb-rows tr[data-id="sb-fake0060"]')).to_contain_text("paused", timeout=6000)
    assert page.evaluate("() => document.querySelector('#sb-rows tr[data-id=sb-fake0061]').__kept === true"), "an unchanged row was rebuilt"
    assert page.evaluate("() => document.activeElement.dataset.act") == "resume", "the focus was lost"

    # Filters apply to all 1,000; the count is the filtered count.
    page.fill("#f-text", "n=777")
    expect(page.locator("#sb-count")).to_have_text(f"1 of {n}")
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-id", "sb-fake0777")
    expect(rows.first.locator("td").nth(5)).to_have_text("777Mi")
    page.fill("#f-text", "")
    page.select_option("#f-status", "paused")
    expect(page.locator("#sb-count")).to_have_text(f"1 of {n}")
    page.select_option("#f-status", "")
    expect(page.locator("#sb-count")).to_have_text(f"{n} of {n}")
    assert rows.count() < 100
    assert served["lists"] >= 2
    assert not errors, f"errors in the page: {errors}"
    ctx.close()


def main():
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        ctx = browser.new_context(viewport={"width": 1280, "height": 800}, accept_downloads=True)
        page = ctx.new_page()
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.set_default_timeout(20000)

        step("sign-in: a wrong key is refused with the API's message, the right one enters")
        page.goto(URL + "/")
        expect(page.locator("#signin-form")).to_be_visible()
        shot(page, "signin")
        page.fill("#signin-key", "sk-not-a-real-key")
        page.click("#signin-form button[type=submit]")
        expect(page.locator("#signin-error")).to_be_visible()
        expect(page.locator("#signin-error")).to_contain_text("invalid API key")
        expect(page.locator("#app")).to_be_hidden()
        page.fill("#signin-key", TOKEN)
        page.click("#signin-form button[type=submit]")
        expect(page.locator("#app")).to_be_visible()
        page.wait_for_selector("body[data-ready=sandboxes]")
        assert page.evaluate("() => sessionStorage.length") == 1

        step("the sandbox list updates live, its limits and network switch from the list alone")
        page.evaluate("() => (window.__sameDocument = true)")
        asked = []
        page.on("request", lambda r: asked.append(r.url))
        label = secrets.token_hex(4)
        created = ok("POST", "/api/v1/sandboxes", {"template": "host", "config": {"metadata": {"console": label}}})
        sid = created["sandbox_id"]
        # Its own limits, networking off: both shown from the list's items.
        limited = ok(
            "POST",
            "/api/v1/sandboxes",
            {"template": "host", "config": {"metadata": {"console": label, "limited": "yes"}, "resources": {"memory": "384Mi", "cpu": "750m"}, "network_enabled": False}},
        )["sandbox_id"]
        # The text filter narrows to them (the list is windowed: with many
        # sandboxes, a new one at its end may be out of view), live.
        page.fill("#f-text", label)
        row = page.locator(f'#sb-rows tr[data-id="{sid}"]')
        expect(row).to_be_visible(timeout=15000)
        expect(row).to_contain_text(f"console={label}")
        expect(row).to_contain_text("running")
        expect(row.locator("td").nth(7)).to_have_text("default")
        lim = page.locator(f'#sb-rows tr[data-id="{limited}"]')
        expect(lim).to_be_visible(timeout=15000)
        expect(lim.locator("td").nth(4)).to_have_text("750m")
        expect(lim.locator("td").nth(5)).to_have_text("384Mi")
        expect(lim.locator("td").nth(7)).to_have_text("off")
        assert page.evaluate("() => window.__sameDocument === true"), "the page reloaded"
        per_row = [u for u in asked if "/api/v1/sandboxes/" in u]
        assert not per_row, f"the list fetched sandboxes one by one: {per_row[:3]}"
        # Only they are listed, and the count says so.
        expect(page.locator("#sb-rows tr")).to_have_count(2)
        total, offset = 0, 0
        while True:
            got = ok("GET", f"/api/v1/sandboxes?limit=1000&offset={offset}")
            total, offset = total + len(got["sandboxes"]), offset + 1000
            if not got["has_more"]:
                break
        expect(page.locator("#sb-count")).to_have_text(f"2 of {total}")
        shot(page, "sandboxes")
        page.set_viewport_size({"width": 390, "height": 844})
        # A phone shows the ID, status and template, the ID not squeezed.
        id_width = page.locator("#sb-table th").first.evaluate("e => e.getBoundingClientRect().width")
        assert id_width > 120, f"the ID column is {id_width}px wide on a phone"
        expect(row.locator("td").nth(3)).to_be_hidden()
        shot(page, "sandboxes-phone")
        page.set_viewport_size({"width": 1280, "height": 800})
        # A click anywhere on a row (not on its buttons) opens the sandbox.
        row.locator("td").nth(2).click()
        expect(page.locator("h1")).to_have_text(sid)
        assert page.evaluate("() => location.hash") == f"#/sandboxes/{sid}"
        page.goto(URL + "/#/sandboxes")
        page.wait_for_selector("body[data-ready=sandboxes]")

        step("a list of 1,000 is windowed: a screenful of rows in the DOM, all of them reachable")
        windowed(browser)

        step("the terminal runs a typed command")
        page.goto(f"{URL}/#/sandboxes/{sid}/terminal")
        expect(page.locator("#term-state")).to_contain_text("connected", timeout=20000)
        page.locator("#term .xterm").click()
        page.keyboard.type("echo console-$((6*7))\n")
        expect(page.locator("#term .xterm-rows")).to_contain_text("console-42", timeout=15000)
        shot(page, "terminal")

        step("files: upload, view, download")
        payload = secrets.token_bytes(3000) + b"\x00end"
        page.goto(f"{URL}/#/sandboxes/{sid}/files")
        page.wait_for_selector("#files tbody tr")
        page.set_input_files("#upload", files=[{"name": "up.bin", "mimeType": "application/octet-stream", "buffer": payload}])
        up = page.locator('#files tr[data-name="up.bin"]')
        expect(up).to_be_visible()
        req = urllib.request.Request(
            f"{URL}/api/v1/sandboxes/{sid}/files?path=/workspace/up.bin", headers={"authorization": f"Bearer {TOKEN}"}
        )
        with urllib.request.urlopen(req) as r:
            stored = r.read()
        assert stored == payload, "the uploaded bytes differ"
        with page.expect_download() as dl:
            up.locator('button[data-act="download"]').click()
        with open(dl.value.path(), "rb") as f:
            assert f.read() == payload, "the downloaded bytes differ"
        ok("POST", f"/api/v1/sandboxes/{sid}/files?path=/workspace/hello.txt", raw=b"hello from the console test\n")
        page.click("#path-form button")
        page.locator('#files tr[data-name="hello.txt"] button.link').click()
        expect(page.locator("#viewer pre")).to_contain_text("hello from the console test")
        shot(page, "files")

        step("network: an invalid policy is refused with the API's message, a valid one is saved")
        page.goto(f"{URL}/#/network/{sid}")
        expect(page.locator("#policy-view")).to_contain_text("block-all")
        editor = page.locator("#policy-edit")
        editor.fill("{ not json")
        page.click("#policy-save")
        expect(page.locator("#policy-errors")).to_contain_text("not valid JSON")
        bad = {"mode": "block-all", "egress": {"trafficRules": [{"name": "bad", "action": "allow", "cidrs": ["10.0.0.0/40"]}]}}
        status, refusal = call("PUT", f"/api/v1/sandboxes/{sid}/network", bad)
        assert status == 400, (status, refusal)
        editor.fill(json.dumps(bad))
        page.click("#policy-save")
        expect(page.locator("#policy-errors")).to_contain_text(refusal["error"]["message"])
        expect(page.locator("#policy-state")).to_have_text("refused")
        good = {
            "mode": "block-all",
            "egress": {"trafficRules": [{"name": "console-allow", "action": "allow", "domains": ["allowed.example"]}]},
        }
        editor.fill(json.dumps(good))
        page.click("#policy-save")
        expect(page.locator("#policy-state")).to_have_text("saved")
        expect(page.locator("#rules")).to_contain_text("console-allow")
        saved = ok("GET", f"/api/v1/sandboxes/{sid}/network")
        assert saved["egress"]["trafficRules"][0]["name"] == "console-allow", saved

        step("network: a denied connection appears in the audit, highlighted, with its reason")
        expect(page.locator("#audit-state")).to_contain_text("live")
        # The sandbox's gateway: an address this daemon made (the host's
        # end of the sandbox's link), which the operator rules deny.
        dial = "gw=$(ip -4 route show default | awk '{print $3}'); echo $gw; timeout 5 bash -c \"echo hi > /dev/tcp/$gw/80\"; true"
        ran = ok(
            "POST",
            f"/api/v1/sandboxes/{sid}/contexts",
            {"type": "cmd", "cmd": {"command": ["sh", "-c", dial]}, "wait_until_done": True, "timeout_sec": 20},
        )
        gateway = ran["stdout"].strip()
        assert re.fullmatch(r"10\.\d+\.\d+\.\d+", gateway), f"no gateway in the sandbox: {ran}"
        denied = page.locator("#audit tr.denied", has_text=gateway)
        expect(denied.first).to_be_visible(timeout=15000)
        expect(denied.first.locator(".reason")).to_contain_text("denied")
        bg = denied.first.locator("td").first.evaluate("e => getComputedStyle(e).backgroundColor")
        assert bg not in ("rgba(0, 0, 0, 0)", "rgb(255, 255, 255)"), f"a denied row is not highlighted: {bg}"
        shot(page, "network")
        page.set_viewport_size({"width": 390, "height": 844})
        shot(page, "network-phone")
        page.set_viewport_size({"width": 1280, "height": 800})

        step("credential sources: created write-only, listed by name and version")
        secret_value = "console-secret-" + secrets.token_hex(6)
        page.fill('#cred-form input[name="name"]', "console-cred")
        page.fill('#cred-form input[name="header"]', "X-Token")
        page.fill('#cred-form input[name="value"]', secret_value)
        page.click("#cred-form button")
        expect(page.locator('#cred-list tr[data-name="console-cred"]')).to_contain_text("v1")
        assert page.input_value('#cred-form input[name="value"]') == ""
        assert secret_value not in page.content()

        step("a session's transcript fills in live; an always_ask call is approved")
        env = ok("POST", "/v1/environments", {"name": "console-e2e", "config": {"type": "cloud"}})
        tools = [{"type": "agent_toolset_20260401", "default_config": {"permission_policy": {"type": "always_ask"}}}]
        agent = ok("POST", "/v1/agents", {"name": "console-asker", "model": "scripted-ask", "tools": tools})
        session = ok("POST", "/v1/sessions", {"agent": agent["id"], "environment_id": env["id"]})
        page.goto(f"{URL}/#/agents/sessions")
        page.locator(f'a[href="#/sessions/{session["id"]}"]').click()
        expect(page.locator("#s-live")).to_contain_text("live")
        page.fill("#composer textarea", "go")
        page.click("#composer button")
        expect(page.locator('.ev[data-type="user.message"]')).to_contain_text("go")
        call_card = page.locator('.ev[data-type="agent.tool_use"]')
        expect(call_card).to_contain_text("echo asked")
        expect(page.locator("#s-status")).to_contain_text("idle")
        shot(page, "session-ask")
        call_card.locator('button[data-act="allow"]').click()
        expect(call_card.locator(".result")).to_contain_text("asked")
        expect(page.locator('.ev[data-type="agent.message"]')).to_contain_text("after asked")
        expect(page.locator('.ev[data-type="session.status_idle"]').last).to_contain_text("end turn")
        events = ok("GET", f"/v1/sessions/{session['id']}/events?limit=1000")["data"]
        assert any(e["type"] == "user.tool_confirmation" and e["result"] == "allow" for e in events), events
        expect(page.locator("#s-stats")).not_to_contain_text("Tokens in 0")
        shot(page, "session")
        page.set_viewport_size({"width": 390, "height": 844})
        shot(page, "session-phone")
        page.set_viewport_size({"width": 1280, "height": 800})

        step("agents and environments list what the API holds")
        page.goto(f"{URL}/#/agents/agents")
        expect(page.locator("#agents")).to_contain_text("console-asker")
        shot(page, "agents")
        page.goto(f"{URL}/#/agents/environments")
        expect(page.locator("#envs")).to_contain_text("console-e2e")
        shot(page, "environments")

        step("overview: counts, latencies and nodes")
        page.goto(f"{URL}/#/overview")
        page.wait_for_selector("body[data-ready=overview]")
        expect(page.locator("#c-running .big")).not_to_have_text("—")
        expect(page.locator("#nodes tbody tr")).to_have_count(1)
        page.wait_for_timeout(3500)  # a second sample draws the lines
        assert page.locator("#cards svg.spark").count() == 5
        shot(page, "overview")

        step("keys: a new key is shown once, the list never holds a value")
        page.goto(f"{URL}/#/keys")
        expect(page.locator("#keys")).to_contain_text("admin")
        page.fill('#new-key input[name="name"]', "console-key")
        page.click("#new-key button")
        once = page.locator('#created input[aria-label="New key"]')
        value = once.input_value()
        assert len(value) > 20, value
        expect(page.locator("#keys")).to_contain_text("console-key")
        assert value not in page.locator("#keys").inner_html()
        page.click("#created #done")
        assert value not in page.content()
        shot(page, "keys")

        step("teams: another team's key sees none of these sandboxes; a link to one is not found")
        team = ok("POST", "/teams", {"name": f"console-{label}"})["id"]
        other = ok("POST", "/api-keys", {"name": "other team", "roles": ["developer"], "team_id": team})["key"]
        octx = browser.new_context(viewport={"width": 1280, "height": 800})
        op = octx.new_page()
        op.on("pageerror", lambda e: errors.append(str(e)))
        op.set_default_timeout(20000)
        op.goto(URL + "/")
        op.fill("#signin-key", other)
        op.click("#signin-form button[type=submit]")
        op.wait_for_selector("body[data-ready=sandboxes]")
        op.wait_for_timeout(2500)  # a refresh of the list, too
        expect(op.locator(f'#sb-rows tr[data-id="{sid}"]')).to_have_count(0)
        assert sid not in op.content(), "another team's sandbox is on the page"
        for tab in ["", "/terminal", "/files"]:
            op.goto(f"{URL}/#/sandboxes/{sid}{tab}")
            expect(op.locator("#view")).to_contain_text(f"sandbox {sid} not found")
        shot(op, "other-team")
        octx.close()

        step("sandbox lifecycle: pause asks first, and can keep the memory")
        page.goto(f"{URL}/#/sandboxes/{sid}/snapshots")
        page.click("#snap-form button")
        expect(page.locator("#snaps tbody tr[data-snap]")).to_have_count(1)
        # A process that a plain pause would end.
        ok("POST", f"/api/v1/sandboxes/{sid}/contexts", {"type": "cmd", "cmd": {"command": ["sleep", "600"]}})
        page.click('#sb-actions button[data-act="pause"]')
        expect(page.locator("dialog.modal")).to_be_visible()
        shot(page, "pause-dialog")
        page.click('dialog.modal button[value="memory"]')
        expect(page.locator("#sb-status")).to_contain_text("paused", timeout=20000)
        page.click('#sb-actions button[data-act="resume"]')
        expect(page.locator("#sb-status")).to_contain_text("running", timeout=20000)
        alive = ok("POST", f"/api/v1/sandboxes/{sid}/contexts", {"type": "cmd", "cmd": {"command": ["pgrep", "-x", "sleep"]}, "wait_until_done": True})
        assert alive["exit_code"] == 0 and alive["stdout"].strip(), f"the sleep did not outlive the pause: {alive}"
        page.click('#sb-actions button[data-act="pause"]')
        page.click('dialog.modal button[value="files"]')
        expect(page.locator("#sb-status")).to_contain_text("paused", timeout=20000)
        shot(page, "snapshots")

        assert not errors, f"errors in the page: {errors}"
        browser.close()
    print("console e2e: ok")


if __name__ == "__main__":
    main()
