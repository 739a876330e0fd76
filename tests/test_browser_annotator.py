"""The annotator in a real headless Chromium (Selenium) against the real waitress
server on loopback: log in, watch a preview play, accept, merge, undo, find the
concept in the library, check the 1366x768 layout and keyboard reach, and save
the README screenshots."""
from __future__ import annotations

import contextlib
import shutil
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import func, select

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
        jobs = getattr(app, "extensions", {}).get("conceptgen_jobs")
        if jobs is not None:
            jobs.shutdown(wait=True)


@contextlib.contextmanager
def _serve(ws):
    """The app of ``ws`` served by :func:`_serving`: (base URL, app)."""
    app = create_app(ws)
    with _serving(app) as base:
        yield base, app


class _Served(tuple):
    """(base URL, workspace, seed info), with the served ``app`` as an attribute."""

    app = None


@pytest.fixture
def server(review_ws):
    """The app under waitress on 127.0.0.1 with a random free port, in a thread."""
    ws, info = review_ws
    with _serve(ws) as (base, app):
        served = _Served((base, ws, info))
        served.app = app
        yield served


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
    from selenium.common.exceptions import StaleElementReferenceException

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except StaleElementReferenceException:  # the page re-rendered between finding and reading
            value = None
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
    _wait(lambda: driver.find_elements(By.LINK_TEXT, "Review"), what="the runs page's Review link")[0].click()
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
    _goto(driver, base + f"/runs/{info.run_id}/clusters?status=candidate")
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
    _goto(driver, base + f"/clusters/{first_id}")
    _wait(lambda: driver.find_elements(By.CSS_SELECTOR, "#similar .similar-item"), what="similar tubes")
    links = driver.find_elements(By.CSS_SELECTOR, "#similar .similar-item figcaption a")
    assert links and all(a.text.startswith("cluster #") for a in links)  # titled as the gallery titles them
    fit = _layout_fits(driver)
    assert fit["overflow"] <= 0 and fit["cut"] == 0, fit
    assert _tab_until(driver, ".decisions .act-reject") <= 40
    driver.find_element(By.CSS_SELECTOR, "tr.member .act-play").click()  # the source, tube drawn over it
    player = driver.find_element(By.ID, "player-video")
    _wait(lambda: driver.execute_script("return arguments[0].readyState >= 2;", player), timeout=60,
          what="the source video")
    assert driver.execute_script("return arguments[0].duration;", player) > 0
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


# --- issue 21: experiments, jobs, playback at the tube, review at scale, safe decisions ---
def _accept(ws, info, cluster_id, name):
    from conceptgen.orm import User
    from conceptgen.review import decisions

    with ws.session() as s:
        user = s.scalar(select(User.id).where(User.name == info.user))
        decisions.accept(s, user, cluster_id, None, name=name, description=f"{name} for the browser test")
        s.commit()


def _by(driver, css):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, css)


def _goto(driver, url):
    """Open ``url`` and wait until the browser is there (a loaded machine has shown the
    previous page after ``get`` returned)."""
    driver.get(url)
    path = url.split("?")[0]
    _wait(lambda: driver.current_url.split("?")[0] == path or driver.get(url), what=f"the browser at {url}")


def _present(driver, css, n=1):
    """The elements matching ``css`` once at least ``n`` are on the page (a loaded machine
    can hand back a page before its body is parsed)."""
    return _wait(lambda: _by(driver, css) if len(_by(driver, css)) >= n else None,
                 what=f"{n} x {css} on {driver.current_url}")


def test_experiment_page_sorts_filters_and_shows_each_plot_once(server, browser, toy_tcav_clips, monkeypatch):
    """A real TCAV experiment (the toy 3D CNN, ``conceptgen tcav``) read in the browser."""
    from selenium.webdriver.support.ui import Select

    import tcav.workflow
    from conceptgen.cli import main
    from conceptgen.orm import TcavExperiment
    from tcav.results import record_progress

    base, ws, info = server
    root = toy_tcav_clips
    stages = []  # what the running experiment showed, stage by stage (the real writer still runs)
    monkeypatch.setattr(tcav.workflow, "record_progress",
                        lambda *a: (stages.append(a[2:]), record_progress(*a)))
    assert main(["--quiet", "--workspace", str(ws.root), "tcav", "--model", str(root / "toy.pt"),
                 "--layers", "conv1,conv2", "--target", "right", "--concepts", str(root / "concepts"),
                 "--class-examples", str(root / "classes"), "--random-sets", "6", "--random-set-size", "8",
                 "--test", "pseudo", "--seed", "1", "--classifier", "mean-diff"]) == 0
    scoring = [stage for done, total, stage in stages if done == 0 and "/" in stage]
    assert scoring and all(stage.startswith("scoring concepts: ") for stage in scoring), stages
    assert [s[:2] for s in stages][-2:] == [(1, 3), (2, 3)]
    with ws.session() as s:
        exp = s.scalars(select(TcavExperiment)).one()
        exp_id, plots = exp.id, list(exp.plots)
        running = TcavExperiment(config={"targets": ["right"], "test": "pseudo"}, model_name="toy",
                                 model_fingerprint="f" * 64, target="right", layers=["conv2"], seed=0,
                                 status="running", summary={}, plots=[])
        s.add(running)
        s.flush()
        running_id = running.id
    record_progress(ws, running_id, 1, 3, "writing results and CAVs")

    driver = browser
    _login(driver, base, info)
    _goto(driver, base + "/experiments")
    assert len(_present(driver, "tr.experiment-row", 2)) == 2
    assert _by(driver, f'tr[data-experiment-id="{running_id}"] progress')[0].get_attribute("value") == "1"
    _goto(driver, base + f"/experiments/{exp_id}")
    _present(driver, "section.plots img.plot", len(plots))
    rows = lambda: [r for r in _by(driver, "tr.verdict") if r.is_displayed()]  # noqa: E731
    n = len(rows())
    assert n >= 4 and {r.get_attribute("data-variant") for r in rows()} == {"dynamic", "static"}
    # each plot once, loaded, its whole title inside the image
    images = _by(driver, "section.plots img.plot")
    assert sorted(i.get_attribute("src").split("/media/")[1] for i in images) == sorted(plots)
    _wait(lambda: all(driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0;", i)
                      for i in images), what="the plots to load")
    # sort by corrected p: ascending, missing values last
    header = _by(driver, 'th[data-key="pcorr"] button')[0]
    header.click()
    values = [r.get_attribute("data-pcorr") for r in rows()]
    numbers = [float(v) for v in values if v]
    assert numbers == sorted(numbers) and values[:len(numbers)] == [v for v in values if v]
    header.click()
    numbers = [float(r.get_attribute("data-pcorr")) for r in rows() if r.get_attribute("data-pcorr")]
    assert numbers == sorted(numbers, reverse=True)
    # filter: static only, then significant only
    Select(driver.find_element("name", "variant")).select_by_visible_text("static")
    assert rows() and all(r.get_attribute("data-variant") == "static" for r in rows())
    assert driver.find_element("id", "verdict-count").text == str(len(rows())) and len(rows()) < n
    Select(driver.find_element("name", "variant")).select_by_index(0)
    assert len(rows()) == n
    fit = _layout_fits(driver)
    assert fit["overflow"] <= 0 and fit["cut"] == 0, fit
    header.click()  # ascending again: the significant verdicts first
    driver.execute_script("window.scrollTo(0, 0);")
    _screenshot(driver, "experiment.png")
    driver.execute_script("document.querySelector('section.plots').scrollIntoView();")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    assert driver.save_screenshot(str(ARTIFACTS / "experiment_plots.png"))
    assert driver.execute_script("return fetch('/api/experiments/%d').then(r => r.json()).then(d => d.results.length);"
                                 % exp_id) == n


def test_export_job_shows_progress_survives_reload_cancels_and_reports_failure(server, browser):
    from conceptgen.errors import DataError

    base, ws, info = server
    app = server.app
    _accept(ws, info, info.cluster_ids[0], "Sliding square")
    driver = browser
    _login(driver, base, info)
    _goto(driver, base + "/concepts")
    _present(driver, "#export-btn")[0].click()
    done = _wait(lambda: _by(driver, ".job.state-done"), timeout=120, what="the export job to finish")
    assert "Exported 6 clips to" in done[0].text and (ws.exports).exists()

    # a long job: progress bar and ETA, found again after a reload, then cancelled
    def slow(reporter):
        reporter.set_total(600)
        for _ in range(600):
            time.sleep(0.05)
            reporter.advance()
        return {}

    slow_id = app.extensions["conceptgen_jobs"].submit("export", {"names": ["Sliding square"]}, slow)
    driver.refresh()
    job = f'.job[data-job-id="{slow_id}"]'
    _wait(lambda: _by(driver, job + ".state-running progress") and
          int(_by(driver, job + " progress")[0].get_attribute("value") or 0) > 0, what="the running job's progress")
    _wait(lambda: "left" in _by(driver, job + " .job-progress")[0].text, what="an ETA")
    _screenshot(driver, "export_job.png")
    driver.refresh()  # survives a reload
    _wait(lambda: _by(driver, job + ".state-running .job-cancel"), what="the job after a reload")[0].click()
    _wait(lambda: _by(driver, job + ".state-cancelled"), what="the job to be cancelled")
    # a failed job says why, in one line
    def failing(reporter):
        raise DataError("concept 'Sliding square' has no examples left; accept a cluster again")

    bad_id = app.extensions["conceptgen_jobs"].submit("export", {"names": ["Sliding square"]}, failing)
    driver.refresh()
    failed = _wait(lambda: _by(driver, f'.job[data-job-id="{bad_id}"].state-failed .job-error'), what="the failure")
    assert failed[0].text == "concept 'Sliding square' has no examples left; accept a cluster again"


def _canvas_yellow_pixels(driver):
    return driver.execute_script("""
        const c = document.getElementById('player-canvas');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0;
        for (let i = 0; i < d.length; i += 4) { if (d[i] > 200 && d[i + 1] > 180 && d[i + 2] < 80) n++; }
        return n;""")


def test_play_source_starts_at_the_tube_loops_its_span_and_zooms(server, browser):
    from selenium.webdriver.common.keys import Keys

    base, ws, info = server
    driver = browser
    _login(driver, base, info)
    _goto(driver, base + f"/clusters/{info.cluster_ids[0]}")
    row = _present(driver, "tr.member", 3)[2]
    tube = driver.execute_script("return fetch('/api/tubes/' + arguments[0]).then(r => r.json());",
                                 row.get_attribute("data-tube-id"))
    assert tube["start_frame"] > 0  # so that "from frame 0" would be visible
    fps, lead = tube["fps"], round(tube["fps"] * 0.5)
    lo, hi = max(0, tube["start_frame"] - lead) / fps, tube["end_frame"] / fps
    row.find_element("css selector", ".act-play").click()
    player = driver.find_element("id", "player")
    _wait(lambda: player.get_attribute("data-state") == "playing", what="the player to start")
    samples = []
    deadline = time.monotonic() + 2.5 * (hi - lo) + 2
    while time.monotonic() < deadline:
        samples.append(driver.execute_script("return document.getElementById('player-video').currentTime;"))
        time.sleep(0.05)
    assert all(lo - 0.3 <= t <= hi + 0.3 for t in samples), (lo, hi, min(samples), max(samples))
    assert any(b < a - 0.2 for a, b in zip(samples, samples[1:])), "the tube's span never looped"
    _wait(lambda: _canvas_yellow_pixels(driver) > 0, what="the tube outlined on the canvas")
    video_w = driver.execute_script("return document.getElementById('player-video').videoWidth;")
    assert driver.execute_script("return document.getElementById('player-canvas').width;") == video_w
    fit = _layout_fits(driver)
    assert fit["overflow"] <= 0 and fit["cut"] == 0, fit
    pause = driver.find_element("id", "player-pause")
    for _ in range(20):  # pause on a frame of the tube for the screenshot
        pause.click()
        if _canvas_yellow_pixels(driver) > 0:
            break
        pause.click()
        time.sleep(0.1)
    _screenshot(driver, "tube_player.png")
    pause.click()

    driver.find_element("id", "player-zoom").click()  # the tube's crop at source resolution
    x0 = min(b[0] for b in tube["boxes"]); x1 = max(b[2] for b in tube["boxes"])
    scale = video_w / tube["mask_width"]
    width = driver.execute_script("return document.getElementById('player-canvas').width;")
    assert x1 - x0 <= width / scale <= min(tube["mask_width"], (x1 - x0) * 1.3 + 4) + 1
    _wait(lambda: _canvas_yellow_pixels(driver) > 0, what="the outline in the zoomed crop")
    driver.find_element("css selector", "body").send_keys(Keys.ESCAPE)
    _wait(lambda: not player.is_displayed(), what="Escape to close the player")


def test_rejecting_an_accepted_cluster_asks_first_and_names_the_concept(server, browser):
    from selenium.webdriver.common.keys import Keys

    base, ws, info = server
    cid = info.cluster_ids[0]
    _accept(ws, info, cid, "Sliding square")
    driver = browser
    _login(driver, base, info)
    _goto(driver, base + f"/runs/{info.run_id}/clusters?status=accepted")
    card = _present(driver, f'.card[data-cluster-id="{cid}"]')[0]
    assert "Accepted as “Sliding square”" in card.text
    assert not card.find_elements("css selector", ".act-accept")  # the state, not a button that no longer applies
    card.send_keys("r")
    dialog = driver.find_element("id", "reject-dialog")
    _wait(lambda: dialog.is_displayed(), what="the confirmation")
    assert "Sliding square" in dialog.text and "retires" in dialog.text
    _screenshot(driver, "reject_confirm.png")
    driver.switch_to.active_element.send_keys(Keys.ENTER)  # focus starts on "Keep it accepted"
    _wait(lambda: not dialog.is_displayed(), what="the dialog to close")
    with ws.session() as s:
        assert s.get(Cluster, cid).status == "accepted"
    card.find_element("css selector", ".act-reject").click()
    done = _reload_marker(driver)
    driver.find_element("id", "reject-confirm").click()
    _wait(done, what="the page to reload after rejecting")
    with ws.session() as s:
        assert s.get(Cluster, cid).status == "rejected"
        assert s.scalar(select(Concept).where(Concept.name == "Sliding square")).status == "retired"


def test_a_520_member_cluster_scrolls_as_one_list_with_bulk_remove_and_move(tmp_path, browser):
    from annotator.testing import create_user, seed_bulk_workspace
    from conceptgen.orm import Cluster, ClusterMember
    from conceptgen.workspace import Workspace

    ws = Workspace.resolve(tmp_path / "big")
    info = seed_bulk_workspace(ws, n_clusters=2, n_tubes=1040, n_videos=10, n_preview_files=2)
    create_user(ws, "alice", "correct-horse")
    big, other = info.cluster_ids
    driver = browser
    with _serve(ws) as (base, _app):
        driver.get(base + "/login")
        driver.find_element("name", "username").send_keys("alice")
        driver.find_element("name", "password").send_keys("correct-horse")
        driver.find_element("css selector", "form.login button[type=submit]").click()
        _wait(lambda: "/login" not in driver.current_url, what="the login to go through")
        _goto(driver, base + f"/clusters/{big}")
        thumb = _present(driver, "tr.member video.preview")[0]
        assert thumb.size["width"] >= 160
        for _ in range(40):
            if len(_by(driver, "tr.member")) >= 520:
                break
            driver.execute_script("window.scrollTo(0, document.body.scrollHeight);")
            time.sleep(0.4)
        assert len(_by(driver, "tr.member")) == 520
        assert driver.find_element("id", "members-loaded").text == "520"
        assert not driver.find_element("id", "members-more").is_displayed()
        # move the first three, then remove all the rest at once
        for box in _by(driver, "tr.member .member-select")[:3]:
            driver.execute_script("arguments[0].click();", box)
        with ws.session() as s:  # typed as the gallery numbers it, "#n" (not the database id)
            other_label = s.get(Cluster, other).label_index
        driver.find_element("id", "bulk-target").send_keys(f"#{other_label}")
        done = _reload_marker(driver)
        driver.find_element("id", "bulk-move").click()
        _wait(done, what="the reload after moving")
        with ws.session() as s:
            assert s.scalar(select(func.count(ClusterMember.id)).where(ClusterMember.cluster_id == other)) == 523
        for _ in range(40):
            if len(_by(driver, "tr.member")) >= 517:
                break
            driver.execute_script("window.scrollTo(0, document.body.scrollHeight);")
            time.sleep(0.4)
        driver.execute_script("window.scrollTo(0, 0);")
        driver.find_element("id", "select-all").click()
        assert driver.find_element("id", "selected-count").text == "517 selected"
        done = _reload_marker(driver)
        driver.find_element("id", "bulk-remove").click()
        _wait(done, what="the reload after removing")
        with ws.session() as s:
            kept = s.scalar(select(func.count(ClusterMember.id))
                            .where(ClusterMember.cluster_id == big, ClusterMember.excluded.is_(False)))
            assert kept == 0 and s.get(Cluster, big).size == 0
    ws.close()
