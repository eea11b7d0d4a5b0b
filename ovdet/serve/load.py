"""A load generator for a running ``ovdet serve``: N requests from C concurrent clients.

Used by the load test and ``benchmarks/bench_serve.py``. Each client is a thread with its own
HTTP connection (``httpx``); requests cycle through the given payloads (e.g. images × vocabularies).
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

__all__ = ["LoadReport", "Payload", "run_load"]


@dataclass(frozen=True)
class Payload:
    """One request: an image file's bytes and the form fields (``classes``, ``conf``, ``imgsz``, …)."""

    name: str
    image: bytes
    fields: dict[str, str] = field(default_factory=dict)


@dataclass
class LoadReport:
    """What a load run saw.

    Attributes:
        latencies_ms: per answered request (any status), in completion order.
        statuses: HTTP status → count.
        errors: exceptions (connection failures, client timeouts), as text.
        retry_after: ``Retry-After`` values of the 503 answers.
        wall_s: the run's duration.
        batch_requests: the ``batch.requests`` value of every 200 answer.
        bodies: the JSON of every 200 answer (only with ``keep_bodies``), by request index.
    """

    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    retry_after: list[str | None] = field(default_factory=list)
    wall_s: float = 0.0
    batch_requests: list[int] = field(default_factory=list)
    bodies: dict[int, Any] = field(default_factory=dict)

    @property
    def ok(self) -> int:
        return self.statuses.get(200, 0)

    def percentile(self, q: float) -> float:
        """The ``q``-th percentile (0–100) of the latencies, ms."""
        if not self.latencies_ms:
            return float("nan")
        xs = sorted(self.latencies_ms)
        return xs[min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))]

    @property
    def rps(self) -> float:
        """Answered requests per second."""
        return sum(self.statuses.values()) / self.wall_s if self.wall_s else 0.0

    def summary(self) -> str:
        mean_batch = statistics.fmean(self.batch_requests) if self.batch_requests else float("nan")
        return (
            f"{sum(self.statuses.values())} answered ({dict(sorted(self.statuses.items()))}), "
            f"{len(self.errors)} errors, {self.rps:.1f} req/s, p50 {self.percentile(50):.0f} ms, "
            f"p99 {self.percentile(99):.0f} ms, mean batch {mean_batch:.2f} requests"
        )


def run_load(
    url: str,
    payloads: list[Payload],
    requests: int,
    concurrency: int,
    timeout: float = 60.0,
    api_key: str | None = None,
    keep_bodies: bool = False,
) -> LoadReport:
    """Send ``requests`` POSTs to ``{url}/v1/detect`` from ``concurrency`` threads; request i uses
    ``payloads[i % len(payloads)]``.

    Args:
        url: the server's base URL (``http://127.0.0.1:8000``).
        timeout: client-side limit per request, seconds (a request past it counts as an error).
        keep_bodies: keep each 200 answer's JSON in :attr:`LoadReport.bodies`.
    """
    import httpx

    report = LoadReport()
    lock = threading.Lock()
    counter = iter(range(requests))
    headers = {"X-API-Key": api_key} if api_key else {}

    def client() -> None:
        with httpx.Client(base_url=url, timeout=timeout, headers=headers) as http:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                p = payloads[i % len(payloads)]
                start = time.perf_counter()
                try:
                    r = http.post("/v1/detect", files=[("images", (p.name, p.image, "image/jpeg"))], data=p.fields)
                except httpx.HTTPError as e:
                    with lock:
                        report.errors.append(f"{type(e).__name__}: {e}")
                    continue
                ms = (time.perf_counter() - start) * 1e3
                body = r.json() if r.status_code == 200 else None
                with lock:
                    report.latencies_ms.append(ms)
                    report.statuses[r.status_code] += 1
                    if r.status_code == 503:
                        report.retry_after.append(r.headers.get("retry-after"))
                    if body is not None:
                        report.batch_requests.append(body["batch"]["requests"])
                        if keep_bodies:
                            report.bodies[i] = body

    threads = [threading.Thread(target=client, name=f"load-{k}") for k in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    report.wall_s = time.perf_counter() - start
    return report
