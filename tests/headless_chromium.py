"""Open a page in headless Chromium (Debian's chromium and chromedriver, driven by selenium): whether its
images loaded, what its console said, a screenshot. Tests that use it are skipped, with the reason, where
Chromium is not installed (.ci/run installs it where it can)."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service


def chromium_driver():
    """Selenium's Chrome driver on Debian's chromium and chromedriver, headless; skip where they are missing."""
    chromium, chromedriver = shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")
    if not chromium or not chromedriver:
        pytest.skip("Chromium and chromedriver are not installed (apt-get install chromium chromium-driver; "
                    ".ci/run installs them where it can)")
    # selenium is a test dependency (pyproject.toml): its absence is a broken set-up, not a reason to skip.

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1366,900"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(chromedriver), options=options)


def open_in_chromium(page: Path, screenshot: Path) -> dict:
    """Load ``page`` in headless Chromium: its images (loaded or not), console messages, a screenshot."""
    driver = chromium_driver()
    try:
        driver.get(page.resolve().as_uri())
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.alt]);")
        # lazy images below the fold: scroll through the page so that each one loads, then look again
        driver.execute_script("document.querySelectorAll('img').forEach(i => i.loading = 'eager');")
        driver.execute_script("window.scrollTo(0, document.body.scrollHeight);")
        deadline = time.time() + 20
        while time.time() < deadline:
            images = driver.execute_script(
                "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.alt]);")
            if all(complete and width > 0 for complete, width, _ in images):
                break
            time.sleep(0.2)
        driver.execute_script("window.scrollTo(0, 0);")
        driver.save_screenshot(str(screenshot))
        width = driver.execute_script("return document.documentElement.scrollWidth;")
        return {"images": images, "console": driver.get_log("browser"), "scroll_width": width}
    finally:
        driver.quit()


