"""report.html in a real browser: headless Chromium (Debian's chromium + chromium-driver) through Selenium.

`make test` installs both (see the Makefile) and sets MTR_REQUIRE_BROWSER=1, so that there a missing browser
fails the test instead of skipping it.
"""

import os
import shutil
from pathlib import Path

import pytest

from mtr.report import write_report
from reportdata import HOSTILE, make_run

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-quic", "--window-size=1300,1800"]

if not (CHROMIUM and CHROMEDRIVER):
    if os.environ.get("MTR_REQUIRE_BROWSER"):
        raise RuntimeError("MTR_REQUIRE_BROWSER is set but chromium/chromedriver are not installed "
                           "(apt-get install chromium chromium-driver; `make test` does it)")
    pytest.skip("chromium and chromedriver are not installed", allow_module_level=True)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must never try to download a driver
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for f in FLAGS:
        opts.add_argument(f)
    opts.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=opts, service=Service(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def _css(driver, sel):
    return driver.find_elements("css selector", sel)


def _select(driver, element_id, value):
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element("id", element_id)).select_by_value(value)


def test_report_renders_and_filters_in_chromium(browser, tmp_path):
    run = make_run(tmp_path / "run")
    page = write_report(run)
    browser.get(page.resolve().as_uri())

    # the table: our two rows and the papers' rows
    assert len(_css(browser, "#results-table tr.ours")) == 2
    assert len(_css(browser, "#results-table tr.ref")) >= 5
    # the plots are drawn, with a real size
    plots = _css(browser, "#training .plot svg")
    assert len(plots) == 6
    assert all(p.size["width"] > 200 and p.size["height"] > 100 for p in plots)
    assert len(_css(browser, "#synthesis .plot svg")) == 1

    # the trace viewer: 4 synthesis + 3 eval + 1 GRPO sample
    assert len(_css(browser, "#trace-list li")) == 8
    assert browser.find_element("id", "trace-count").text == "8 of 8 episodes"
    _select(browser, "filter-status", "rejected")
    assert len(_css(browser, "#trace-list li")) == 2
    _select(browser, "filter-reason", "malformed")
    items = _css(browser, "#trace-list li")
    assert len(items) == 1 and "Question number 3?" in items[0].text
    assert "parse error" in browser.find_element("id", "trace-detail").text.lower()
    _select(browser, "filter-status", "")
    _select(browser, "filter-reason", "")
    _select(browser, "filter-correct", "correct")
    assert len(_css(browser, "#trace-list li")) == 4
    _select(browser, "filter-correct", "")
    _select(browser, "filter-source", "eval")
    assert len(_css(browser, "#trace-list li")) == 3

    # hostile model text is shown as text and never runs
    _select(browser, "filter-source", "synthesis")
    box = browser.find_element("id", "filter-text")
    box.send_keys("number 1?")
    items = _css(browser, "#trace-list li")
    assert len(items) == 1
    items[0].click()
    detail = browser.find_element("id", "trace-detail")
    assert HOSTILE in detail.text
    assert browser.execute_script("return window.__xss") is None
    assert not _css(browser, "#trace-detail img") and not _css(browser, "#trace-detail pre *")

    shot = Path(os.environ.get("MTR_SCREENSHOT_DIR", tmp_path)) / "report-test.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000

    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE" and "favicon" not in e["message"]]
    assert not errors, errors
