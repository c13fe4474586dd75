"""Every shell and Python block of README.md and docs/*.md runs as written, against a real
`flock serve --demo`, or says why it cannot: a line `<!-- docs-test: skip: REASON -->`
right above its fence. So the docs cannot drift from the code again.

Shell blocks run one by one under `bash -euo pipefail`; a page's Python blocks run in
order as one script (later blocks use what earlier ones defined). Both get `FLOCK_URL`,
and `127.0.0.1:8344` is pointed at the test's server.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from support.serve import ServeProcess, server_env

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUNNABLE = {"bash": "shell", "sh": "shell", "shell": "shell", "python": "python", "py": "python"}
# Blocks that are not code to run: data, output, HTTP exchanges ("" is an unlabelled block).
NOT_CODE = {"", "json", "text", "http", "toml", "yaml", "ini"}
# A fenced block, indented (in a list item) or not, with an optional mark right above it.
FENCE = re.compile(
    r"^(?P<indent>[ \t]*)(?:<!-- docs-test: (?P<mark>[^\n]*?) -->\n(?P=indent))?"
    r"```(?P<lang>[\w-]*)\n(?P<code>.*?)^(?P=indent)```$",
    re.M | re.S,
)
RESULTS_FILE = re.compile(r"(?<![\w-])(?:[a-z]+-)?\d{8}T\d{6}Z\.json\b")  # scaleout-<time>.json too
BLOCK_SECONDS = 60


@dataclass
class Block:
    page: Path
    line: int
    kind: str
    code: str
    skip: str | None

    def __str__(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks() -> list[Block]:
    found = []
    for page in PAGES:
        text = page.read_text()
        for match in FENCE.finditer(text):
            kind = RUNNABLE.get(match["lang"])
            if kind is None:
                continue
            mark = match["mark"]
            skip = mark.removeprefix("skip:").strip() if mark else None
            line = text.count("\n", 0, match.start("lang")) + 1
            code = textwrap.dedent(match["code"]) if match["indent"] else match["code"]
            found.append(Block(page, line, kind, code, skip))
    return found


def test_every_block_is_run_or_is_not_code() -> None:
    """A block in a language this test does not run must be data or output, so no shell or
    Python block escapes it under another name (`console`, `python3`, ...)."""
    for page in PAGES:
        text = page.read_text()
        for match in FENCE.finditer(text):
            lang = match["lang"]
            line = text.count("\n", 0, match.start("lang")) + 1
            where = f"{page.relative_to(ROOT)}:{line}"
            assert lang in RUNNABLE or lang in NOT_CODE, f"{where}: a ```{lang} block"
    fences = sum(len(re.findall(r"^[ \t]*```", p.read_text(), re.M)) for p in PAGES)
    found = sum(len(list(FENCE.finditer(p.read_text()))) for p in PAGES)
    assert fences == 2 * found, "a fence this test does not parse (unclosed or misindented)"


def test_every_results_file_the_docs_quote_is_in_the_repository() -> None:
    """A benchmark figure can be checked against the run it came from."""
    for page in PAGES:
        for name in RESULTS_FILE.findall(page.read_text()):
            path = ROOT / "benchmarks" / "results" / name
            assert path.is_file(), f"{page.relative_to(ROOT)} quotes {name}: commit {path}"


def test_every_skipped_block_says_why() -> None:
    for block in blocks():
        assert block.skip is None or len(block.skip) > 10, f"{block}: give a reason"


def test_no_block_calls_a_bare_flock() -> None:
    """`flock` is also util-linux's /usr/bin/flock: `uv run flock` or `python -m flock`."""
    for block in blocks():
        if block.kind == "shell":
            bare = re.search(r"(?:^|[;&|(]\s*)flock\s", block.code, flags=re.M)
            assert bare is None, f"{block}: write `uv run flock`, not `flock`"


def _point_at(code: str, url: str) -> str:
    return code.replace("http://127.0.0.1:8344", url)


def _run(command: list[str], block: str, url: str, cwd: Path) -> None:
    """Run a block in a process group of its own: a block that hangs (say, one that starts
    a server and is not marked) is killed with everything it started."""
    env = server_env(FLOCK_URL=url, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "src")]))
    with subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as process:
        try:
            stdout, stderr = process.communicate(timeout=BLOCK_SECONDS)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate()
            pytest.fail(f"{block} still ran after {BLOCK_SECONDS} s:\n{stdout}\n{stderr}")
    assert process.returncode == 0, f"{block} exited {process.returncode}:\n{stdout}\n{stderr}"


@pytest.fixture(scope="module")
def demo_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    workdir = tmp_path_factory.mktemp("docs-demo")
    with ServeProcess(
        "--demo", "--store", "memory://", "--idempotency", "memory://", cwd=workdir
    ) as server:
        yield server.url


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_blocks_of_a_page_run(page: Path, demo_url: str, tmp_path: Path) -> None:
    mine = [b for b in blocks() if b.page == page and b.skip is None]
    for block in (b for b in mine if b.kind == "shell"):
        _run(
            ["bash", "-euo", "pipefail", "-c", _point_at(block.code, demo_url)],
            str(block),
            demo_url,
            tmp_path,
        )
    python = [b for b in mine if b.kind == "python"]
    if python:
        script = tmp_path / "blocks.py"
        script.write_text("\n\n".join(_point_at(b.code, demo_url) for b in python))
        _run([sys.executable, str(script)], f"{page.name} python blocks", demo_url, tmp_path)
