"""Fixtures of the reliability suite: server processes and TCP proxies, always cleaned up."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .harness import ServerFactory, TCPProxy


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[ServerFactory]:
    """`serve(app, store=..., idempotency=..., **env)` starts `flock serve`; all are stopped."""
    factory = ServerFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.stop_all()


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
