"""User study end to end over real HTTP on 127.0.0.1 (waitress, a random free port).

- `test_two_raters_in_headless_chromium`: Debian's chromium + chromedriver (envs/setup-browser.sh)
  driven by Selenium answer a whole small study as two raters with the keyboard only (one with
  the arrow keys, one with 1/2), one of them reloading the page half way (resume); then the
  database and the analysis are checked. Skipped when /usr/bin/chromium or /usr/bin/chromedriver
  is absent. Set DB3D_USERSTUDY_SCREENSHOTS=<dir> to keep the page screenshots.
- `test_fifty_concurrent_raters_lose_no_answer`: 50 threads, one rater each, submit all their
  answers at once (plus one repeat each) over loopback; bounded in count and time; every answer
  must be stored exactly once. Prints answers/s and latency percentiles.

Only 127.0.0.1 is ever contacted; Chromium runs with its background networking off and Selenium
Manager is never started (the driver path is given).
"""
from __future__ import annotations

import http.client
import json
import os
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

import pytest

from db3d.userstudy import analysis, design
from test_userstudy import build, trial_role_side

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1280,900"]


class LiveServer:
    """The study's app under waitress on 127.0.0.1:<free port>, in a daemon thread."""

    def __init__(self, study: Path, threads: int = 8):
        from waitress import create_server

        from db3d.userstudy.server import create_app

        self.app = create_app(study)
        self.server = create_server(self.app, host="127.0.0.1", port=0, threads=threads, ident="db3d-test")
        self.port = self.server.effective_port
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.close()
        self.thread.join(10)
        self.app.extensions["db3d_store"].close()


@pytest.fixture
def live(tmp_path, monkeypatch):
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    servers = []

    def start(**kw):
        out, manifest = build(tmp_path, subjects=("dog",), **kw)
        srv = LiveServer(out)
        servers.append(srv)
        return srv, out, manifest

    yield start
    for s in servers:
        s.close()


# ----------------------------------------------------------------------------- browser
def _browser(tmp_path):
    pytest.importorskip("selenium", reason="selenium is not installed (envs/requirements-cpu.txt)")
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        pytest.skip(f"{CHROMIUM} or {CHROMEDRIVER} is absent: run `bash envs/setup-browser.sh` "
                    "(Debian packages chromium, chromium-driver) to run the browser test")
    os.environ.setdefault("SE_AVOID_STATS", "true")  # Selenium Manager is not used (driver path given)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for flag in CHROME_FLAGS + [f"--user-data-dir={tempfile.mkdtemp(prefix='chrome-', dir=tmp_path)}"]:
        opts.add_argument(flag)
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)


def _wait(driver, cond, timeout=15.0):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(lambda d: cond(d))


def _app_attr(driver, name):
    return driver.find_element("id", "app").get_attribute(name)


def _answer_in_browser(driver, srv, token, schedule, want, keys, reload_after=None, shots=None):
    """Open the rater link and answer every trial with the keyboard; want(trial) -> role to pick."""
    from selenium.webdriver.common.action_chains import ActionChains

    by_public = {t["public_id"]: t for t in schedule}
    driver.get(f"{srv.url}/r/{token}")
    answered = 0
    while True:
        _wait(driver, lambda d: _app_attr(d, "data-ready") == "1" or _app_attr(d, "data-done") == "1")
        if _app_attr(driver, "data-done") == "1":
            break
        public = _app_attr(driver, "data-trial")
        trial = by_public[public]
        assert trial["trial_id"] == schedule[answered]["trial_id"], "the page shows the trials in schedule order"
        progress = driver.find_element("id", "progress-text").text
        assert progress == f"Question {answered + 1} of {len(schedule)}"
        if shots is not None and trial["question"] not in shots:
            shots[trial["question"]] = driver.get_screenshot_as_png()
        side = trial_role_side(trial, want(trial))
        ActionChains(driver).send_keys(keys[side]).perform()
        answered += 1
        _wait(driver, lambda d, old=public: _app_attr(d, "data-done") == "1"
              or _app_attr(d, "data-trial") not in ("", old))
        if reload_after is not None and answered == reload_after:
            driver.get(f"{srv.url}/r/{token}")  # resume: continues where the rater stopped
    assert driver.find_element("id", "done").is_displayed()
    assert "Thank you" in driver.find_element("id", "done").text
    assert driver.find_element("id", "progress-text").text == f"{len(schedule)} of {len(schedule)} answered"
    return answered


@pytest.mark.slow
def test_two_raters_in_headless_chromium(live, tmp_path):
    from selenium.webdriver.common.keys import Keys

    driver = _browser(tmp_path)  # skips here when there is no browser
    shots: dict[str, bytes] = {}
    try:
        srv, out, m = live(raters=2)
        tokens = dict(design.read_raters(out))
        # rater 0: the method everywhere, arrow keys, reloads after 4 answers
        s0 = design.rater_schedule(m, 0)
        n0 = _answer_in_browser(driver, srv, tokens["r000"], s0,
                                lambda t: "real" if t["kind"] == "check" else "dreambooth3d",
                                {"left": Keys.ARROW_LEFT, "right": Keys.ARROW_RIGHT}, reload_after=4, shots=shots)
        # rater 1: the baseline on 3D consistency, the method otherwise, keys 1/2
        s1 = design.rater_schedule(m, 1)
        baseline = {p["id"]: p["baseline"]["variant"] for p in m["pairs"]}

        def want1(t):
            if t["kind"] == "check":
                return "real"
            return baseline[t["item"]] if t["question"] == "consistency" else "dreambooth3d"

        n1 = _answer_in_browser(driver, srv, tokens["r001"], s1, want1, {"left": "1", "right": "2"})
        shots["done"] = driver.get_screenshot_as_png()
        logs = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert logs == [], logs  # no JS error, no failed request
    finally:
        driver.quit()
    keep = os.environ.get("DB3D_USERSTUDY_SCREENSHOTS")
    for name, png in shots.items():
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        (tmp_path / f"rater_{name}.png").write_bytes(png)
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(tmp_path / f"rater_{name}.png", Path(keep) / f"rater_{name}.png")

    # the database: every answer once, with the side the keyboard chose
    assert n0 == n1 == m["design"]["trials_per_rater"] == 2 * 3 + 3
    rows = srv.app.extensions["db3d_store"].responses()
    assert len(rows) == 18 and len({(r["rater_id"], r["trial_id"]) for r in rows}) == 18
    for r in rows:
        if r["kind"] == "check":
            assert r["chosen"] == "real" and r["correct"] == 1
        elif r["rater_id"] == "r001" and r["question"] == "consistency":
            assert r["chosen"] in ("naive", "latent_nerf")
        else:
            assert r["chosen"] == "dreambooth3d"
        assert r["client_ms"] is not None and r["client_ms"] >= 0
    assert {r["choice"] for r in rows} == {"left", "right"}

    # the analysis
    paths = analysis.analyse(out, tmp_path / "results" / "userstudy.tsv")
    import csv

    with open(paths["summary"], newline="") as f:
        table = {(r["question"], r["baseline"]): r for r in csv.DictReader(f, delimiter="\t")}
    for b in ("latent_nerf", "naive"):
        subj, cons = table[("subject", b)], table[("consistency", b)]
        assert (subj["n_raters"], subj["n_responses"], subj["n_prefer_method"], subj["rate"]) == ("2", "2", "2", "1")
        assert (subj["pairs_method"], subj["pairs_tied"], subj["fleiss_kappa"]) == ("1", "0", "")
        assert (cons["n_responses"], cons["n_prefer_method"], cons["rate"]) == ("2", "1", "0.5")
        assert (cons["pairs_method"], cons["pairs_baseline"], cons["pairs_tied"]) == ("0", "0", "1")
        assert float(cons["p_value"]) == 1.0 and float(cons["fleiss_kappa"]) == pytest.approx(-1.0)
        assert subj["raters_kept"] == "2" and subj["raters_dropped"] == "0"


# ----------------------------------------------------------------------------- concurrency
N_RATERS = 50


def _post(conn, path, body):
    data = json.dumps(body)
    conn.request("POST", path, body=data, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    return resp.status, json.loads(resp.read())


@pytest.mark.slow
def test_fifty_concurrent_raters_lose_no_answer(live, record_property):
    srv, out, m = live(raters=N_RATERS)
    tokens = design.read_raters(out)
    assert len(tokens) == N_RATERS
    barrier = threading.Barrier(N_RATERS)
    latencies: list[float] = []
    statuses: list[tuple[str, int, str]] = []
    errors: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + 60  # bounded: every client stops by then whatever happens

    def rater(rid: str, token: str):
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
        try:
            trials = design.rater_schedule(m, design.rater_index(rid))
            barrier.wait(timeout=30)
            for t in trials + [trials[0]]:  # the first answer once more: a duplicate, idempotent
                if time.monotonic() > deadline:
                    raise TimeoutError("deadline")
                choice = trial_role_side(t, "real" if t["kind"] == "check" else "dreambooth3d")
                t0 = time.perf_counter()
                code, body = _post(conn, f"/api/r/{token}/answer",
                                   {"trial_id": t["public_id"], "choice": choice, "ms": 500})
                dt = time.perf_counter() - t0
                with lock:
                    latencies.append(dt)
                    statuses.append((rid, code, body.get("status", body.get("error"))))
        except Exception as e:  # noqa: BLE001 - reported below
            with lock:
                errors.append(f"{rid}: {e!r}")
        finally:
            conn.close()

    threads = [threading.Thread(target=rater, args=rt, daemon=True) for rt in tokens]
    t_start = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join(max(0.1, deadline - time.monotonic() + 5))
    wall = time.perf_counter() - t_start
    assert not any(th.is_alive() for th in threads), "clients still running after the deadline"
    assert errors == []

    per_rater = m["design"]["trials_per_rater"]
    expected = N_RATERS * per_rater
    assert len(statuses) == expected + N_RATERS
    assert all(code == 200 for _, code, _ in statuses)
    assert sum(s == "created" for _, _, s in statuses) == expected
    assert sum(s == "duplicate" for _, _, s in statuses) == N_RATERS
    rows = srv.app.extensions["db3d_store"].responses()
    assert len(rows) == expected  # no answer lost, none twice
    assert {r["rater_id"] for r in rows} == {rid for rid, _ in tokens}

    lat = sorted(latencies)
    p50 = statistics.median(lat)
    p95 = lat[min(len(lat) - 1, int(round(0.95 * len(lat))) - 1)]
    rate = len(lat) / wall
    figures = {"raters": N_RATERS, "requests": len(lat), "answers_stored": len(rows), "wall_s": round(wall, 3),
               "answers_per_s": round(rate, 1), "p50_ms": round(1000 * p50, 1), "p95_ms": round(1000 * p95, 1),
               "max_ms": round(1000 * lat[-1], 1)}
    for k, v in figures.items():
        record_property(k, v)
    print("\nuserstudy concurrency:", json.dumps(figures))
    assert wall < 60
