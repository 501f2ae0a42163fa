"""Several servers behind one client: requests spread over the healthy ones, a failed one is set aside.

A server whose request fails at the connection level (refused, reset, unavailable) is ejected for a
while that doubles with each failure in a row (1 s, 2 s, 4 s ... 30 s); when its time is up, the
next request it would get is its probe: an answer brings it back, a failure ejects it for longer.
The request that failed is retried on another server at once (classifying is idempotent), so a
dead server costs its in-flight requests one more round trip, not an error.

`dns:///name:port` (gRPC) is one endpoint to this pool: gRPC itself resolves every address behind the
name and balances over them (round_robin), which is what a headless Kubernetes Service needs.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterable

DNS_SCHEME = "dns:///"  # gRPC's resolver: every address of the name, balanced by gRPC itself
EJECTION_SECONDS, MAX_EJECTION_SECONDS = 1.0, 30.0


def parse_urls(url: str | Iterable[str]) -> tuple[str, ...]:
    """"host1:8001,host2:8001" or a list of addresses: the distinct ones, in order."""
    items = url.split(",") if isinstance(url, str) else list(url)
    urls = tuple(dict.fromkeys(item.strip() for item in items if item and item.strip()))
    if not urls:
        raise ValueError(f"no server address in {url!r}")
    return urls


@dataclasses.dataclass
class _Health:
    failures: int = 0  # in a row
    ejected_until: float = 0.0
    generation: int = 0  # bumped on each failure: connections made before it are dropped


class EndpointPool:
    """Round-robin over the servers not ejected; thread-safe (the async client uses it from one thread)."""

    def __init__(self, urls: tuple[str, ...], ejection: float = EJECTION_SECONDS, max_ejection: float = MAX_EJECTION_SECONDS):
        self.urls = urls
        self.ejection, self.max_ejection = ejection, max_ejection
        self._health = {url: _Health() for url in urls}
        self._turn = 0
        self._lock = threading.Lock()

    def pick(self, avoid: Iterable[str] = ()) -> str:
        """The next server in turn among those not ejected (and not in `avoid`, the ones this request
        already failed on); with none, the one whose ejection ends first."""
        avoid = set(avoid)
        with self._lock:
            now = time.monotonic()
            ready = [u for u in self.urls if self._health[u].ejected_until <= now and u not in avoid]
            if not ready:
                ready = [min((u for u in self.urls if u not in avoid) or self.urls, key=lambda u: self._health[u].ejected_until)]
            self._turn += 1
            return ready[self._turn % len(ready)]

    def others_ready(self, url: str, avoid: Iterable[str] = ()) -> bool:
        """Whether a server other than `url` (and those in `avoid`) can take a request now."""
        avoid = set(avoid) | {url}
        now = time.monotonic()
        with self._lock:
            return any(self._health[u].ejected_until <= now for u in self.urls if u not in avoid)

    def failed(self, url: str) -> None:
        with self._lock:
            health = self._health[url]
            health.failures += 1
            health.generation += 1
            health.ejected_until = time.monotonic() + min(self.max_ejection, self.ejection * 2 ** (health.failures - 1))

    def succeeded(self, url: str) -> None:
        with self._lock:
            health = self._health[url]
            health.failures, health.ejected_until = 0, 0.0

    def generation(self, url: str) -> int:
        with self._lock:
            return self._health[url].generation

    def ejected(self) -> list[str]:
        now = time.monotonic()
        with self._lock:
            return [u for u in self.urls if self._health[u].ejected_until > now]
