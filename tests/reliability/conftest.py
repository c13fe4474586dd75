"""Fixtures of the reliability suite: TCP proxies, always closed (`serve` is in tests/)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

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
