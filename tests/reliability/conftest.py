"""Fixtures of the reliability suite: TCP proxies, always closed (`serve` is in tests/), and
the durable stores the process tests run on."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .harness import TCPProxy


@pytest.fixture
def tcp_proxy() -> Iterator[Callable[[str], TCPProxy]]:
    """`tcp_proxy(service_url)` starts a cuttable proxy to that service; all are closed."""
    proxies: list[TCPProxy] = []

    def start(url: str) -> TCPProxy:
        proxy = TCPProxy.to_url(url)
        proxies.append(proxy)
        proxy.start()
        return proxy

    try:
        yield start
    finally:
        for proxy in proxies:
            proxy.close()


@pytest.fixture(params=["sqlite", "postgres"])
def durable_store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store URL processes can share: a SQLite file, or this test's PostgreSQL schema."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'board.db'}"
    url = request.getfixturevalue("postgres_url")
    schema = request.getfixturevalue("pg_schema")
    return f"{url}?schema={schema}"
