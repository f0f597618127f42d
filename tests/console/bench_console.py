"""The console's load and render figures, in headless Chromium, against a
daemon serving the embedded (gzipped) console. scripts/bench-console.sh
starts the daemon and runs this.

usage: bench_console.py URL KEY
  CHROMIUM   the browser (default /usr/bin/chromium)
  SANDBOXES  how many sandboxes to create for the list (default 1000)

Measures, each in a fresh browser context (a cold cache), medians of 3:
  - baseline: /healthz loaded by the same browser from the same daemon
    (its load event; the floor for any page);
  - first load, signed in, to interactive: from navigation start to the
    later of (a) the frame after the sandbox list was rendered has been
    painted and (b) the end of the last long task (> 50 ms, seen by a
    PerformanceObserver installed before the page's scripts run), with no
    long task in the QUIET_MS after it;
  - bytes transferred (as sent: headers and gzipped bodies, from Resource
    Timing) by every request started before interactive: the page, its
    modules and its API calls;
  - the list of SANDBOXES sandboxes: from the list response's last byte
    (Resource Timing's responseEnd) to the second animation frame after
    the render (the frame showing the rows has been painted), which covers
    parsing the JSON, filtering, building the rows and the frame; the DOM
    work alone (the console's user timing); the rows in the DOM; and the
    in-place refreshes (every 2 s) after it.
"""
import concurrent.futures
import json
import os
import statistics
import sys
import time
import urllib.error
import urllib.request

from playwright.sync_api import sync_playwright

URL, KEY = sys.argv[1].rstrip("/"), sys.argv[2].strip()
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
COUNT = int(os.environ.get("SANDBOXES", "1000"))
TARGETS = {"bytes": 300 * 1024, "tti_ms": 1000, "render_ms": 200}
QUIET_MS = 500


def api(method, path, body=None):
    req = urllib.request.Request(
        URL + path,
        data=json.dumps(body).encode() if body is not None else None,
        method=method,
        headers={"authorization": f"Bearer {KEY}", "content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        raise SystemExit(f"{method} {path}: {e.code} {e.read().decode(errors='replace')}")


# Runs before the page's own scripts: records every long task.
LONG_TASKS = """
window.__longTasks = [];
new PerformanceObserver((l) => {
  for (const e of l.getEntries()) window.__longTasks.push([e.startTime, e.startTime + e.duration]);
}).observe({ type: "longtask" });
"""

# Resolves once interactive (see the module's doc) with what it took.
INTERACTIVE = """(quiet) => new Promise((resolve) => {
  const painted = () => performance.getEntriesByName("sandboxes:painted")[0];
  const wait = () => {
    const p = painted();
    if (!p) return setTimeout(wait, 10);
    const shownAt = p.startTime + p.duration;
    const rows = document.querySelectorAll("#sb-rows tr").length;
    const settle = () => {
      const ends = window.__longTasks.map((t) => t[1]);
      const t = Math.max(shownAt, ...ends);
      if (performance.now() < t + quiet) return setTimeout(settle, 20);
      // And a task posted now runs at once: the main thread is free.
      const posted = performance.now();
      setTimeout(() => {
        if (performance.now() - posted > 50) return settle();
        const res = performance.getEntriesByType("resource");
        const nav = performance.getEntriesByType("navigation")[0];
        const before = [nav, ...res].filter((e) => e.startTime <= t);
        const assets = (e) => e === nav || new URL(e.name).pathname.startsWith("/console/");
        const sum = (xs) => xs.reduce((a, e) => a + e.transferSize, 0);
        const list = res.find((e) => e.name.includes("/api/v1/sandboxes?"));
        resolve({
          tti: t, shownAt, rows, longTasks: window.__longTasks.length,
          assets: sum(before.filter(assets)), api: sum(before.filter((e) => !assets(e))), requests: before.length,
          urls: before.map((e) => new URL(e.name).pathname),
          list: list && { responseEnd: list.responseEnd, encoded: list.encodedBodySize, decoded: list.decodedBodySize },
        });
      }, 0);
    };
    settle();
  };
  wait();
})"""


def first_load(browser):
    ctx = browser.new_context(viewport={"width": 1280, "height": 800})
    # Signed in already: the key the sign-in form would store.
    ctx.add_init_script(f"sessionStorage.setItem('sandstone.key', {json.dumps(KEY)})")
    ctx.add_init_script(LONG_TASKS)
    page = ctx.new_page()
    page.goto(URL + "/", wait_until="commit")
    r = page.evaluate(INTERACTIVE, QUIET_MS)
    draws = page.evaluate("() => performance.getEntriesByName('sandboxes:draw').map(e => e.duration)")
    painted = page.evaluate("() => performance.getEntriesByName('sandboxes:painted')[0].duration")
    count = page.locator("#sb-count").text_content()
    # A few refreshes (every 2 s) update the rendered list in place.
    page.wait_for_timeout(6500)
    later = page.evaluate("() => performance.getEntriesByName('sandboxes:painted').map(e => e.duration)")[1:]
    ctx.close()
    return {
        "tti_ms": r["tti"], "bytes": r["assets"] + r["api"], "assets": r["assets"], "api": r["api"], "requests": r["requests"],
        "rows": r["rows"], "count": count, "long_tasks": r["longTasks"],
        # From the list's last byte to its rows painted.
        "render_ms": r["shownAt"] - r["list"]["responseEnd"] if r["list"] else None,
        "dom_ms": draws[0] if draws else None, "data_to_paint_ms": painted, "refresh_ms": later,
        "list_encoded": r["list"]["encoded"] if r["list"] else 0, "list_decoded": r["list"]["decoded"] if r["list"] else 0,
        "xterm_loaded": any("xterm" in u for u in r["urls"]),
        "detail_fetches": sum(1 for u in r["urls"] if u.startswith("/api/v1/sandboxes/")),
    }


def baseline(browser):
    ctx = browser.new_context()
    page = ctx.new_page()
    page.goto(URL + "/healthz", wait_until="load")
    ms, size = page.evaluate("() => { const n = performance.getEntriesByType('navigation')[0]; return [n.loadEventEnd, n.transferSize]; }")
    ctx.close()
    return {"ms": ms, "bytes": size}


def create_many(n):
    def one(i):
        config = {"network_enabled": False, "metadata": {"bench": "console", "n": str(i)}}
        # Some with their own limits, shown in the list.
        if i % 3 == 0:
            config["resources"] = {"cpu": "1", "memory": "256Mi"}
        return api("POST", "/api/v1/sandboxes", {"template": "host", "config": config})

    t = time.time()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(n)))
    return time.time() - t


def verdict(value, target):
    return "ok" if value is not None and value <= target else "OVER"


def main():
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        # Warm the browser process itself once, so the first measured load
        # does not pay for its start-up.
        baseline(browser)
        runs = 3
        base = [baseline(browser) for _ in range(runs)]
        empty = [first_load(browser) for _ in range(runs)]
        took = create_many(COUNT)
        full = [first_load(browser) for _ in range(runs)]
        browser.close()

    med = lambda xs: statistics.median(xs)
    b_ms = med([b["ms"] for b in base])
    print(f"== console bench: {COUNT} sandboxes created in {took:.1f} s; medians of {runs} cold loads")
    print(f"baseline  /healthz page load           {b_ms:7.0f} ms   {med([b['bytes'] for b in base]):8.0f} B")
    for name, r in (("empty daemon", empty), (f"{COUNT} sandboxes", full)):
        tti = med([x["tti_ms"] for x in r])
        by = med([x["bytes"] for x in r])
        assets = med([x["assets"] for x in r])
        print(f"first load, {name:16} console   {assets / 1024:7.1f} KiB  (the page and its modules, gzipped; xterm loaded: {r[0]['xterm_loaded']})")
        print(f"first load, {name:16} all       {by / 1024:7.1f} KiB  (target <= {TARGETS['bytes'] // 1024} KiB: {verdict(by, TARGETS['bytes'])}; all {r[0]['requests']} requests until interactive, API included; per-sandbox fetches: {r[0]['detail_fetches']})")
        print(f"first load, {name:16} TTI       {tti:7.0f} ms   (target <= {TARGETS['tti_ms']} ms: {verdict(tti, TARGETS['tti_ms'])}; baseline {b_ms:.0f} ms, +{tti - b_ms:.0f} ms; long tasks: {r[0]['long_tasks']})")
    x = full[0]
    print(f"list response, {COUNT} sandboxes          {x['list_encoded'] / 1024:7.1f} KiB  (as sent; {x['list_decoded'] / 1024:.1f} KiB as JSON)")
    render = med([x["render_ms"] for x in full])
    print(f"render {COUNT} rows: response to painted  {render:7.1f} ms   (target <= {TARGETS['render_ms']} ms: {verdict(render, TARGETS['render_ms'])}; rows in the DOM: {x['rows']}; list shows \"{x['count']}\")")
    print(f"  ... data in hand to painted           {med([x['data_to_paint_ms'] for x in full]):7.1f} ms   (of which DOM work {med([x['dom_ms'] for x in full]):.1f} ms)")
    refresh = [m for x in full for m in x["refresh_ms"]]
    if refresh:
        print(f"refresh of the {COUNT}, to painted      {med(refresh):7.1f} ms   (the 2 s poll, rows updated in place; median, max {max(refresh):.1f} ms over {len(refresh)})")
    failed = [
        med([x["bytes"] for x in full]) > TARGETS["bytes"],
        med([x["tti_ms"] for x in full]) > TARGETS["tti_ms"],
        render > TARGETS["render_ms"],
        # Windowed: the list counts every sandbox and holds a screenful.
        not 0 < x["rows"] < COUNT or x["count"] != f"{COUNT} of {COUNT}",
        x["detail_fetches"] != 0,
    ]
    sys.exit(1 if any(failed) else 0)


if __name__ == "__main__":
    main()
