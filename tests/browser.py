"""Headless Chromium for the browser tests: Debian's ``chromium`` driven by Playwright."""

from __future__ import annotations

from pathlib import Path
from typing import Any

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def launch_chromium(playwright: Any) -> Any:
    """A headless browser; fails with the reason if Debian's chromium is missing."""
    assert CHROMIUM.is_file(), f"{CHROMIUM} is missing: `make setup` installs Debian's chromium"
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
