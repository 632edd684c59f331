"""Headless Debian Chromium driven by selenium, for the web console's tests and screenshots.

Never downloads a browser: the Chromium and chromedriver on PATH are used, or the caller
skips. ``SE_OFFLINE`` keeps Selenium Manager from reaching out even if it is consulted.
"""

from __future__ import annotations

import os
import shutil

READY = "body[data-ready='1']"
TIMEOUT_S = 30  # generous: CI shares 2 cores; a passing wait returns at once


def missing() -> str | None:
    """Why a browser test cannot run here, or None when it can."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    if not (shutil.which("chromium") or shutil.which("chromium-browser")):
        return "Chromium is not installed (apt-get install chromium chromium-driver)"
    if not shutil.which("chromedriver"):
        return "chromedriver is not installed (apt-get install chromium-driver)"
    return None


def start_chromium(width: int = 1200, height: int = 900):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or shutil.which("chromium-browser")
    # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={width},{height}", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)


def wait(driver, condition, timeout: float = TIMEOUT_S):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(condition)


def open_console(driver, url: str, tab: str = "playground", token: str | None = None) -> None:
    """Load the console afresh on ``tab`` with an empty session storage (or only ``token``)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC

    driver.get(f"{url}/#{tab}")
    driver.execute_script("sessionStorage.clear(); if (arguments[0]) sessionStorage.setItem('csft-admin-token', arguments[0]);", token)
    driver.refresh()  # the page reads the storage when it starts
    wait(driver, EC.presence_of_element_located((By.CSS_SELECTOR, READY)))
