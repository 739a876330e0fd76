"""The annotator in a real headless Chromium (Selenium) against the real waitress
server on loopback: log in, watch a preview play, accept, merge, undo, find the
concept in the library, check the 1366x768 layout and keyboard reach, and save
the README screenshots."""
from __future__ import annotations

import shutil
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import select

from annotator import create_app
from conceptgen.orm import Cluster, Concept

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[1]
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
SCREENSHOTS = REPO / "docs" / "screenshots"
ARTIFACTS = REPO / "test-artifacts"
VIEWPORT = (1366, 768)


def _require_browser():
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.skip(f"BROWSER TESTS NOT RUN: {', '.join(missing)} missing; "
                    f"install with `apt-get install chromium chromium-driver` (.ci/run does)")
    pytest.importorskip("selenium", reason="BROWSER TESTS NOT RUN: selenium is not installed")


@contextmanager
def _serving(app):
    """``app`` under waitress on 127.0.0.1 with a random free port, in a thread: its base URL."""
    from waitress import create_server

    srv = create_server(app, host="127.0.0.1", port=0, threads=4)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.effective_port}"
    finally:
        srv.close()
        thread.join(timeout=10)


@pytest.fixture
def server(review_ws):
    """The app under waitress on 127.0.0.1 with a random free port, in a thread."""
    ws, info = review_ws
    with _serving(create_app(ws)) as base:
        yield base, ws, info


@pytest.fixture
def browser(tmp_path):
    _require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--autoplay-policy=no-user-gesture-required", f"--user-data-dir={tmp_path / 'profile'}",
                 f"--window-size={VIEWPORT[0]},{VIEWPORT[1]}"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the console, where CSP reports what it blocks
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    driver.set_page_load_timeout(60)
    inner = driver.execute_script("return [window.innerWidth, window.innerHeight];")
    driver.set_window_size(2 * VIEWPORT[0] - inner[0], 2 * VIEWPORT[1] - inner[1])  # viewport, not window, is 1366x768
    try:
        yield driver
        blocked = _blocked_by_csp(driver)  # every page a test visited satisfies the Content-Security-Policy
        assert not blocked, f"the Content-Security-Policy blocked something the pages use: {blocked}"
    finally:
        driver.quit()


def _blocked_by_csp(driver) -> list[str]:
    """Console messages (since the last call) in which the Content-Security-Policy refused something."""
    return [e["message"] for e in driver.get_log("browser") if "Content Security Policy" in e["message"]]


def _wait(predicate, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _screenshot(driver, name):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    target = SCREENSHOTS / name
    assert driver.save_screenshot(str(target))
    shutil.copyfile(target, ARTIFACTS / name)
    assert target.stat().st_size > 10_000


def _login(driver, base, info):
    from selenium.webdriver.common.by import By

    driver.get(base + "/runs")
    assert "/login" in driver.current_url
    driver.find_element(By.NAME, "username").send_keys(info.user)
    driver.find_element(By.NAME, "password").send_keys(info.password)
    driver.find_element(By.CSS_SELECTOR, "form.login button[type=submit]").click()
    _wait(lambda: driver.current_url.endswith("/runs"), what="the runs page after login")


def _reload_marker(driver):
    driver.execute_script("window.__stale = true;")
    return lambda: driver.execute_script("return window.__stale === undefined && document.readyState === 'complete';")


def _layout_fits(driver):
    """Nothing cut off horizontally: no page-wide horizontal scroll and every button inside the viewport."""
    return driver.execute_script("""
        const w = document.documentElement.clientWidth;
        const overflow = document.documentElement.scrollWidth - w;
        const cut = Array.from(document.querySelectorAll('button, a.btn, input'))
          .filter(e => e.offsetParent !== null && !e.closest('dialog'))
          .map(e => e.getBoundingClientRect())
          .filter(r => r.left < 0 || r.right > w + 0.5).length;
        return {width: w, overflow: overflow, cut: cut};""")


def _tab_until(driver, css, limit=80):
    """Press Tab from the top of the page until an element matching ``css`` has focus."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    driver.execute_script("document.activeElement && document.activeElement.blur(); window.scrollTo(0, 0);")
    for presses in range(1, limit + 1):
        ActionChains(driver).send_keys(Keys.TAB).perform()
        if driver.execute_script("return document.activeElement.matches(arguments[0]);", css):
            return presses
    raise AssertionError(f"{css} not reachable with {limit} Tab presses")


@pytest.fixture
def probe_sites(review_ws):
    """The app with a page carrying an injected inline script (``/probe``), and another
    site (its own port: another origin) whose page frames the app's login page.
    Requested before ``browser``, so the browser quits (and drops its connections) first."""
    ws, _ = review_ws
    app = create_app(ws)
    app.add_url_rule("/probe", "probe", lambda: '<!doctype html><title>probe</title><p id="p">static</p>'
                                                '<script>document.title = "injected script ran"</script>'
                                                '<script src="/static/app.js"></script>')
    with _serving(app) as base, _serving(_framer(base + "/login")) as other_site:
        yield base, other_site


def test_the_content_security_policy_blocks_inline_script_and_framing_in_chromium(probe_sites, browser):
    """What the policy is for, seen in the real browser: a script injected into a page does
    not run, and another site cannot frame the annotator (clickjacking)."""
    from selenium.webdriver.common.by import By

    base, other_site = probe_sites
    browser.get(base + "/probe")
    _wait(lambda: browser.execute_script("return document.readyState === 'complete';"), what="the probe page")
    assert browser.title == "probe"  # the inline script did not run; the page's own app.js did not break it
    _wait_for_block(browser, "inline script")
    browser.get(other_site + "/")
    frames = {f.get_attribute("id"): f for f in browser.find_elements(By.TAG_NAME, "iframe")}
    browser.switch_to.frame(frames["control"])  # a page that allows framing shows: frames load here
    _wait(lambda: browser.find_elements(By.ID, "inside"), what="the frameable control page")
    browser.switch_to.default_content()
    _wait_for_block(browser, "frame-ancestors")
    browser.switch_to.frame(frames["target"])
    assert browser.find_elements(By.NAME, "username") == [], "another site framed the login page"
    browser.switch_to.default_content()


def _wait_for_block(driver, what: str) -> list[str]:
    """Wait until the console reports a CSP block whose message mentions ``what``."""
    seen: list[str] = []

    def reported() -> list[str]:
        seen.extend(_blocked_by_csp(driver))
        return [m for m in seen if what in m]

    return _wait(reported, what=f"the browser to report a blocked {what}")


def _framer(target: str):
    """A WSGI app for another site (another origin: its own port) that frames ``target``
    next to a frameable page of its own."""
    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/html")])
        if environ["PATH_INFO"] == "/inside":
            return [b'<p id="inside">a frameable page</p>']
        return [f'<iframe id="control" src="/inside"></iframe><iframe id="target" src="{target}"></iframe>'.encode()]
    return app


def test_review_flow_in_chromium(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    base, ws, info = server
    driver = browser
    _login(driver, base, info)

    # gallery, with a preview that loads and plays
    driver.find_element(By.LINK_TEXT, "Review").click()
    _wait(lambda: "/clusters" in driver.current_url, what="the gallery")
    size = driver.execute_script("return [window.innerWidth, window.innerHeight];")
    assert tuple(size) == VIEWPORT, size
    video = driver.find_element(By.CSS_SELECTOR, ".card video.preview")
    _wait(lambda: driver.execute_script("return arguments[0].readyState >= 2;", video), what="a preview to load")
    t0 = driver.execute_script("return arguments[0].currentTime;", video)
    _wait(lambda: driver.execute_script("return arguments[0].currentTime;", video) != t0, timeout=15,
          what="the preview to play")
    assert driver.execute_script("return arguments[0].loop && arguments[0].muted;", video)

    fit = _layout_fits(driver)
    assert fit["overflow"] <= 0 and fit["cut"] == 0, fit
    assert _tab_until(driver, ".card .act-accept") <= 40
    driver.execute_script("document.activeElement.blur();")
    driver.find_element(By.TAG_NAME, "body").send_keys("j")
    assert driver.execute_script("return document.activeElement.classList.contains('card');")
    time.sleep(0.5)  # let the first frames paint for the screenshot
    _screenshot(driver, "gallery.png")

    # accept the first card with a name
    cards = driver.find_elements(By.CSS_SELECTOR, ".card")
    first_id = int(cards[0].get_attribute("data-cluster-id"))
    cards[0].find_element(By.CSS_SELECTOR, ".act-accept").click()
    driver.find_element(By.ID, "accept-name").send_keys("Sliding square")
    driver.find_element(By.ID, "accept-description").send_keys("A bright square sliding to the right.")
    done = _reload_marker(driver)
    driver.find_element(By.ID, "accept-submit").click()
    _wait(done, what="the page to reload after accepting")
    with ws.session() as s:
        assert s.get(Cluster, first_id).status == "accepted"

    # merge two candidate clusters
    driver.get(base + f"/runs/{info.run_id}/clusters?status=candidate")
    cards = driver.find_elements(By.CSS_SELECTOR, ".card")
    pair = [int(c.get_attribute("data-cluster-id")) for c in cards[:2]]
    for card in cards[:2]:
        card.find_element(By.CSS_SELECTOR, ".merge-select").click()
    done = _reload_marker(driver)
    driver.find_element(By.ID, "merge-btn").click()
    _wait(done, what="the page to reload after merging")
    with ws.session() as s:
        assert s.get(Cluster, pair[1]).status == "merged"

    # undo with the keyboard shortcut
    done = _reload_marker(driver)
    driver.find_element(By.TAG_NAME, "body").send_keys("u")
    _wait(done, what="the page to reload after undo")
    with ws.session() as s:
        assert [s.get(Cluster, c).status for c in pair] == ["candidate", "candidate"]

    # cluster detail: layout, keyboard reach, similar tubes, screenshot
    driver.get(base + f"/clusters/{first_id}")
    _wait(lambda: driver.find_elements(By.CSS_SELECTOR, "#similar .similar-item"), what="similar tubes")
    fit = _layout_fits(driver)
    assert fit["overflow"] <= 0 and fit["cut"] == 0, fit
    assert _tab_until(driver, ".decisions .act-reject") <= 40
    driver.find_element(By.CSS_SELECTOR, "tr.member .act-play").click()  # full source, tube outlined
    player = driver.find_element(By.ID, "player-video")
    _wait(lambda: driver.execute_script("return arguments[0].readyState >= 2;", player), timeout=60,
          what="the highlighted source video")
    assert driver.execute_script("return arguments[0].duration;", player) > 0
    assert list((ws.media / "highlight").glob("tube*.mp4"))
    driver.find_element(By.ID, "player-close").click()
    driver.execute_script("document.querySelectorAll('video.preview').forEach(v => { if (!v.src) v.src = v.dataset.src; });")
    time.sleep(1.0)
    _screenshot(driver, "cluster_detail.png")

    # the concept is in the library
    driver.find_element(By.LINK_TEXT, "Concepts").click()
    names = [e.text for e in driver.find_elements(By.CSS_SELECTOR, ".concept-name")]
    assert "Sliding square" in names
    with ws.session() as s:
        assert s.scalar(select(Concept).where(Concept.name == "Sliding square")).current_version == 1
    assert driver.find_elements(By.TAG_NAME, "body")[0].send_keys(Keys.ESCAPE) is None
