"""A real headless Chromium for the tests that check what a page renders.

`render(url)` loads the page, lets its scripts run (virtual time, so no sleeping) and
returns the DOM they built. Every host but 127.0.0.1 is unresolvable inside the browser,
so a page that still needs a CDN fails to render. Without Chromium the test is skipped
with a reason, or fails under FLOCK_REQUIRE_SERVICES=1 (CI, where `.ci/run` installs it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

import pytest

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
RENDER_TIMEOUT_SECONDS = 90


def chromium_path() -> str:
    """The Chromium binary (FLOCK_TEST_CHROMIUM, else the first one on PATH); skip or fail."""
    explicit = os.environ.get("FLOCK_TEST_CHROMIUM")
    found = explicit or next((p for p in map(shutil.which, CANDIDATES) if p), None)
    if found:
        return found
    message = "Chromium is not installed (apt-get install chromium, or set FLOCK_TEST_CHROMIUM)"
    if os.environ.get("FLOCK_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{message}; FLOCK_REQUIRE_SERVICES=1 forbids skipping", pytrace=False)
    pytest.skip(message)


def render(url: str, *, binary: str | None = None, budget_ms: int = 15_000) -> str:
    """The DOM of `url` once its scripts ran (at most `budget_ms` of virtual time)."""
    binary = binary or chromium_path()
    with tempfile.TemporaryDirectory(prefix="flock-chromium-") as profile:
        result = subprocess.run(
            [
                binary,
                "--headless",
                "--no-sandbox",  # tests run as root in CI
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                f"--user-data-dir={profile}",
                f"--virtual-time-budget={budget_ms}",
                "--dump-dom",
                url,
            ],
            capture_output=True,
            text=True,
            timeout=RENDER_TIMEOUT_SECONDS,
            check=False,
        )
    assert result.returncode == 0, f"chromium exited {result.returncode}:\n{result.stderr[-3000:]}"
    return result.stdout
