"""The web console (`web.ui`, pgdoorman/web/static) in a real headless Chromium: Debian's `chromium`
driven through its `chromium-driver` by Selenium. One pooler with the console and one browser per
module; every test saves a screenshot under its temporary directory (docs/web-console.md shows one).
`make deps` installs the browser (scripts/ensure_deps.sh browser), `make venv` Selenium (the test
extra); where either is missing the tests skip and say which.

Run: .venv/bin/python -m pytest tests/browser
"""

from __future__ import annotations

import base64
import json
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.integration.test_admin import admin, client, pool_row_when, show, waiting_clients
from tests.integration.test_jwt import keypair, token
from tests.support.cluster import ADMIN_USER, DBNAME, SCRAM_USER, PgCluster, pooler_config
from tests.support.pooler import Pooler, free_port, wait_for

pytestmark = pytest.mark.timeout(180)

PASSWORD = "console-test-pw"
AUTH = "Basic " + base64.b64encode(f"{ADMIN_USER}:{PASSWORD}".encode()).decode()
POOL = f"{DBNAME}/{SCRAM_USER}"
# Columns that move with the clock between a SHOW and the page's snapshot.
VOLATILE = {"avg_xact_time", "maxwait", "maxwait_us", "oldest_active_age_ms"}
XSS = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>'


# ------------------------------------------------------------------------------------------ fixtures
class Console:
    """A running pooler with `web.ui` on, and the URL of its page."""

    def __init__(self, pooler: Pooler, web_port: int, sso_key: Any) -> None:
        self.pooler = pooler
        self.url = f"http://127.0.0.1:{web_port}"
        self.sso_key = sso_key  # signs SSO tokens the pooler accepts


@pytest.fixture(scope="module")
def console(pg: PgCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    general = {"admin_password": PASSWORD, "query_wait_timeout": 30000}
    config = pooler_config(pg, general=general, pool_size=4)
    port = free_port()
    keys = tmp_path_factory.mktemp("sso-keys")
    _, pub, key = keypair(keys, "sso")
    config["web"] = {"enabled": True, "host": "127.0.0.1", "port": port, "ui": True, "sso_enabled": True,
                     "sso_public_key_file": str(pub), "sso_admin_groups": ["dba"]}
    pooler = Pooler(config, str(tmp_path_factory.mktemp("console-pooler"))).start()
    try:
        yield Console(pooler, port, key)
    finally:
        pooler.stop()


def _skip(reason: str) -> None:
    print(f"\nbrowser tests skipped: {reason}", file=sys.stderr)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _skip("selenium is not installed (make venv installs the test extra)")
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver") or next(
        (p for p in ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver") if Path(p).exists()), None)
    if binary is None or driver_path is None:
        _skip("chromium or chromedriver is missing (make deps runs scripts/ensure_deps.sh browser, which "
              "installs Debian's chromium and chromium-driver)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,900", "--no-first-run", "--disable-extensions",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(options=opts, service=Service(executable_path=driver_path))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def sign_in(driver: Any, auth: str | None = AUTH) -> None:
    """Every request of the browser carries these Basic credentials (None: none at all)."""
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {"Authorization": auth} if auth else {}})


def open_console(driver: Any, console: Console, auth: str | None = AUTH) -> None:
    sign_in(driver, auth)
    driver.get(console.url + "/")
    driver.get_log("browser")  # only this page's messages from here
    driver.get_log("performance")
    wait_for(lambda: driver.execute_script(
        "return document.querySelector('#cards .card') !== null && document.getElementById('role').textContent"),
        what="the overview rendered")


def console_errors(driver: Any) -> list[dict[str, Any]]:
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def shot(driver: Any, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.png"
    driver.save_screenshot(str(path))
    return path


def tab(driver: Any, name: str) -> None:
    driver.find_element("css selector", f'#tabs button[data-tab="{name}"]').click()


def click(driver: Any, selector: str) -> None:
    """Click what `selector` finds; the page re-renders its tables every second, so an element found
    a moment ago may be gone: find it again."""
    from selenium.common.exceptions import StaleElementReferenceException

    def attempt() -> bool:
        try:
            driver.find_element("css selector", selector).click()
        except StaleElementReferenceException:
            return False
        return True

    wait_for(attempt, what=f"a click on {selector}")


def texts(driver: Any, selector: str) -> list[str]:
    """The textContent of everything `selector` finds, read in one go (no stale elements)."""
    return driver.execute_script(  # type: ignore[no-any-return]
        "return Array.from(document.querySelectorAll(arguments[0]), e => e.textContent)", selector)


def page_pool_row(driver: Any) -> dict[str, str] | None:
    """The pool row of the page as {column: cell text}."""
    return driver.execute_script(  # type: ignore[no-any-return]
        """const tr = document.querySelector(`#pools-table tr[data-pool="${arguments[0]}"]`);
        if (!tr) return null;
        const out = {"_class": tr.className};
        for (const td of tr.querySelectorAll("td[data-col]")) out[td.dataset.col] = td.textContent;
        return out;""", POOL)


@pytest.fixture
def traffic(console: Console) -> Iterator[threading.Event]:
    """Three clients running short transactions until the test clears the returned event (they stay
    connected, idle, until the end of the test)."""
    go = threading.Event()
    go.set()
    stop = threading.Event()
    conns = [client(console.pooler) for _ in range(3)]

    def run(c: psycopg.Connection[Any]) -> None:
        while not stop.is_set():
            if go.is_set():
                c.execute("SELECT pg_sleep(0.002)").fetchall()
            else:
                time.sleep(0.05)

    threads = [threading.Thread(target=run, args=(c,), daemon=True) for c in conns]
    for t in threads:
        t.start()
    try:
        yield go
    finally:
        stop.set()
        for t in threads:
            t.join(10)
        for c in conns:
            c.close()


# ------------------------------------------------------------------------------------------ tests
def test_page_shows_the_pools_as_show_pools(browser: Any, console: Console, traffic: threading.Event,
                                             tmp_path: Path) -> None:
    open_console(browser, console)
    assert browser.find_element("id", "role").text == "admin"
    assert browser.find_element("id", "version").text.startswith("PgDoorman ")
    # The live charts: points are added every second and the latency series has values under traffic.
    chart = browser.find_element("id", "chart-latency")
    wait_for(lambda: int(chart.get_attribute("data-points") or 0) >= 3, what="three chart points")
    first = browser.find_element("css selector", '#chart-latency path[data-series="p99"]').get_attribute("d")
    points = int(chart.get_attribute("data-points"))
    wait_for(lambda: int(browser.find_element("id", "chart-latency").get_attribute("data-points")) >= points + 2,
             what="the chart moving")
    later = browser.find_element("css selector", '#chart-latency path[data-series="p99"]').get_attribute("d")
    assert later and later != first and later.count("L") >= 2, (first, later)
    rate = browser.find_element("css selector", '#chart-rate path[data-series="xact"]').get_attribute("d")
    assert rate.startswith("M")
    shot(browser, tmp_path, "overview")

    tab(browser, "pools")
    wait_for(lambda: page_pool_row(browser), what="the pool's row")
    assert int(page_pool_row(browser)["cl_active"] or 0) + int(page_pool_row(browser)["cl_idle"] or 0) >= 0
    traffic.clear()  # the three clients stay connected, idle: a state SHOW POOLS and the page can agree on
    with admin(console.pooler, password=PASSWORD) as a:
        def agree() -> bool:
            (want,) = [r for r in show(a, "POOLS")[1] if r["user"] == SCRAM_USER]
            if str(want["cl_idle"]) != "3":  # a client may still be in its last transaction: not settled yet
                return False
            got = page_pool_row(browser) or {}
            return all(got.get(k, "").replace(",", "") == str(v) for k, v in want.items() if k not in VOLATILE)

        wait_for(agree, what="the page's pool row equal to SHOW POOLS")
        row = page_pool_row(browser)
        assert row is not None and row["cl_idle"] == "3" and row["pool_size"] == "4" and row["database"] == DBNAME
    shot(browser, tmp_path, "pools")
    assert console_errors(browser) == []


def test_pause_and_resume_from_the_page(browser: Any, console: Console, tmp_path: Path) -> None:
    with client(console.pooler) as c:  # a first login learns the server's parameters from a server
        c.execute("SELECT 1").fetchall()
    open_console(browser, console)
    tab(browser, "pools")
    button = f'#pools-table tr[data-pool="{POOL}"] button[data-action="%s"]'
    wait_for(lambda: browser.find_elements("css selector", button % "pause"), what="the pause button")
    click(browser, button % "pause")
    dialog = browser.find_element("id", "confirm")
    wait_for(dialog.is_displayed, what="the confirmation")
    assert f'"{DBNAME}"' in browser.find_element("id", "confirm-text").text
    shot(browser, tmp_path, "confirm")
    with admin(console.pooler, password=PASSWORD) as a:
        assert pool_row_when(a, lambda r: True, "the pool")["paused"] == 0  # nothing before the confirmation
        browser.find_element("id", "confirm-ok").click()
        pool_row_when(a, lambda r: r["paused"] == 1, "the pool paused by the page")
        with waiting_clients(console.pooler, 2) as results:
            pool_row_when(a, lambda r: r["cl_waiting"] == 2, "two clients waiting on the paused pool")
            wait_for(lambda: (page_pool_row(browser) or {}).get("cl_waiting") == "2", what="the page's waiters")
            assert "waiting" in page_pool_row(browser)["_class"]  # highlighted
            assert results == []
            shot(browser, tmp_path, "paused")
            wait_for(lambda: browser.find_elements("css selector", button % "resume"), what="the resume button")
            click(browser, button % "resume")
            wait_for(dialog.is_displayed, what="the confirmation")
            browser.find_element("id", "confirm-ok").click()
        assert [tuple(r) for r in results] == [(42,), (42,)]
        assert pool_row_when(a, lambda r: r["cl_waiting"] == 0, "no waiters")["paused"] == 0
    assert "PAUSE app (web API)" in console.pooler.log() and "RESUME app (web API)" in console.pooler.log()
    # Both are in the overview's recent events, newest first.
    tab(browser, "overview")
    wait_for(lambda: texts(browser, '#events-table tr[data-kind] td:nth-child(2)')[:2] == ["resume", "pause"],
             what="the pause and resume in the recent events")
    assert texts(browser, '#events-table tr[data-kind="pause"] td:nth-child(3)')[0] == DBNAME
    shot(browser, tmp_path, "events")
    assert console_errors(browser) == []


def test_server_data_is_shown_as_text(browser: Any, console: Console, tmp_path: Path) -> None:
    with client(console.pooler, application_name=XSS) as c:
        c.execute("SELECT %s::text AS x", (XSS,), prepare=True).fetchall()
        c.execute("SELECT %s::text AS x", (XSS,), prepare=True).fetchall()
        open_console(browser, console)
        tab(browser, "clients")
        browser.find_element("id", "clients-filter").send_keys("onerror")
        cells = '#clients-table td[data-col="application_name"]'
        wait_for(lambda: texts(browser, cells) == [XSS], what="the application_name shown as text")
        assert "1–1 of 1" in browser.find_element("id", "clients-pager").text
        shot(browser, tmp_path, "clients")
        tab(browser, "prepared")
        queries = '#prepared-table td[data-col="query"]'
        wait_for(lambda: any("::text" in q for q in texts(browser, queries)), what="the prepared statement")
    assert browser.execute_script("return window.__xss === undefined")
    assert browser.find_elements("css selector", "main img, main script") == []
    assert console_errors(browser) == []


def test_phone_width(browser: Any, console: Console, tmp_path: Path) -> None:
    browser.set_window_size(390, 844)
    try:
        open_console(browser, console)
        tab(browser, "pools")
        wait_for(lambda: page_pool_row(browser), what="the pool's row")
        # Nothing wider than the screen but the tables' own scrolling boxes.
        assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth + 1")
        shot(browser, tmp_path, "phone")
    finally:
        browser.set_window_size(1280, 900)


def document_response(driver: Any) -> dict[str, Any]:
    """The response to the last page load, from the browser's network log."""
    messages = [json.loads(e["message"])["message"] for e in driver.get_log("performance")]
    responses = [m["params"]["response"] for m in messages
                 if m["method"] == "Network.responseReceived" and m["params"]["type"] == "Document"]
    assert responses, "no document response in the network log"
    return responses[-1]  # type: ignore[no-any-return]


def test_anonymous_gets_the_sign_in_prompt(browser: Any, console: Console, tmp_path: Path) -> None:
    for auth in (None, "Basic " + base64.b64encode(f"{ADMIN_USER}:wrong".encode()).decode()):
        sign_in(browser, auth)
        browser.get_log("performance")
        browser.get(console.url + "/")
        # 401 with a Basic challenge is what makes a browser ask for the user name and password (headless
        # Chromium leaves the prompt unanswered and shows nothing); none of the pooler's state is there.
        main = document_response(browser)
        headers = {k.lower(): v for k, v in main["headers"].items()}
        assert main["status"] == 401 and 'Basic realm="pg_doorman"' in headers["www-authenticate"].splitlines(), main
        assert browser.find_elements("css selector", "#cards, #pools-table") == []
        assert "cl_idle" not in browser.page_source
    shot(browser, tmp_path, "anonymous")


def test_log_tail_shows_hostile_lines_as_text(browser: Any, console: Console, tmp_path: Path) -> None:
    # A login with a hostile user name: the pooler logs the refusal with the name in it.
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(console.pooler.dsn(XSS, "wrong", DBNAME), connect_timeout=10).close()
    open_console(browser, console)
    tab(browser, "logs")
    wait_for(lambda: any("onerror" in t for t in texts(browser, "#logs .line .msg")), what="the refusal in the log tail")
    assert any(t == "INFO" for t in texts(browser, "#logs .line .lv"))
    shot(browser, tmp_path, "logs")
    assert browser.find_elements("css selector", "#logs img, #logs script") == []
    assert browser.execute_script("return window.__xss === undefined")
    # The page's own polling of /api/logs is not in the tail.
    assert not any("path=/api/logs " in t for t in texts(browser, "#logs .line .msg"))
    assert console_errors(browser) == []


def test_sso_user_reads_but_cannot_act(browser: Any, console: Console, tmp_path: Path) -> None:
    sign_in(browser, None)
    browser.get(console.url + "/static/favicon.svg")  # a page of the origin, to set its cookie on
    browser.add_cookie({"name": "sso_access_token", "value": token(console.sso_key, "carol", groups=["dev"]),
                        "path": "/"})
    try:
        browser.get(console.url + "/")
        wait_for(lambda: browser.find_element("id", "role").text == "sso: carol", what="signed in by SSO")
        tab(browser, "pools")
        wait_for(lambda: page_pool_row(browser), what="the pool's row")
        # No command buttons for an Sso user: neither every pool's nor a pool row's.
        assert not browser.find_element("id", "admin-actions").is_displayed()
        assert browser.find_elements("css selector", "#pools-table button") == []
        tab(browser, "clients")  # personal data: an Sso user may read it
        wait_for(lambda: texts(browser, "#clients-pager span"), what="the clients page")
        # A POST from the page itself, with the cookie: refused with 403.
        status = browser.execute_async_script(
            """const done = arguments[arguments.length - 1];
            fetch(location.origin + "/api/admin/pause", {method: "POST", headers: {"X-Requested-With": "test"}})
              .then(r => done(r.status), e => done(String(e)));""")
        assert status == 403
        shot(browser, tmp_path, "sso")
        with admin(console.pooler, password=PASSWORD) as a:
            assert pool_row_when(a, lambda r: True, "the pool")["paused"] == 0
    finally:
        browser.delete_all_cookies()
    # The 403 just provoked is the one error.
    assert [e for e in console_errors(browser) if "/api/admin/pause" not in e["message"]] == []


def table_rows(driver: Any, table: str) -> dict[str, dict[str, str]]:
    """The rows of a table of the page: {data-key: {column: cell text}}."""
    return driver.execute_script(  # type: ignore[no-any-return]
        """const out = {};
        for (const tr of document.querySelectorAll(`#${arguments[0]} tbody tr[data-key]`)) {
          const row = {};
          for (const td of tr.querySelectorAll("td[data-col]")) row[td.dataset.col] = td.textContent;
          out[tr.dataset.key] = row;
        }
        return out;""", table)


def test_applications_top_clients_and_process(browser: Any, console: Console, tmp_path: Path) -> None:
    conns = [client(console.pooler, application_name=name) for name in ("billing", "billing", "reports")]
    try:
        for i, c in enumerate(conns):
            for _ in range(i + 1):
                c.execute("SELECT 1").fetchall()
        open_console(browser, console)
        tab(browser, "apps")
        with admin(console.pooler, password=PASSWORD) as a:
            def agree() -> bool:
                clients = show(a, "CLIENTS")[1]
                page = table_rows(browser, "apps-table")
                for name in ("billing", "reports"):
                    mine = [r for r in clients if r["application_name"] == name]
                    want = {"application_name": name, "clients": str(len(mine)),
                            "queries_total": str(sum(int(r["query_count"]) for r in mine)),
                            "transactions_total": str(sum(int(r["transaction_count"]) for r in mine)),
                            "errors_total": str(sum(int(r["error_count"]) for r in mine))}
                    if page.get(name) != want:
                        return False
                return True

            wait_for(agree, what="the page's applications equal to SHOW CLIENTS grouped by application_name")
            assert table_rows(browser, "apps-table")["billing"]["clients"] == "2"
            ids = {r["client_id"] for r in show(a, "CLIENTS")[1] if r["application_name"] in ("billing", "reports")}
        wait_for(lambda: ids <= set(table_rows(browser, "top-table")), what="the busiest clients")
        browser.find_element("css selector", '#top-by option[value="age"]').click()
        shot(browser, tmp_path, "applications")

        tab(browser, "process")
        wait_for(lambda: texts(browser, '#process-cards [data-card="pid"] .value') == [str(console.pooler.proc.pid)],
                 what="the process's pid")
        names = wait_for(lambda: {r["name"] for r in table_rows(browser, "threads-table").values()} or None,
                         what="the threads")
        assert {"MainThread", "worker-0", "metrics-http"} <= names, names
        # CPU % needs two snapshots a second apart.
        wait_for(lambda: texts(browser, '#process-cards [data-card="cpu"] .value')[0].endswith("%"),
                 what="the CPU share")
        shot(browser, tmp_path, "process")
    finally:
        for c in conns:
            c.close()
    assert console_errors(browser) == []
