"""A load test against a real ``ovdet serve`` process on loopback: 300 requests from 8 concurrent
clients with 3 vocabularies — no failures, batching visible, RSS flat — then a burst past the
queue, which gets 503s with Retry-After (not errors, not a hang). Bounded in count and time;
the latency figures are printed, never asserted (they are benchmarks)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

pytest.importorskip("fastapi")
psutil = pytest.importorskip("psutil")

from ovdet.serve.load import Payload, run_load  # noqa: E402
from tests.serving import running_server  # noqa: E402

VOCABULARIES = ["person, car, bus, bicycle", "dog, cat, bowl, cup, pizza", "coco"]
QUEUE = 16


def test_load_and_burst(coco128_images: list[Path], capsys: pytest.CaptureFixture) -> None:
    args = ["--model", "ovdet-demo", "--device", "cpu", "--queue-size", str(QUEUE), "--max-batch", "8"]
    args += ["--batch-window-ms", "15", "--imgsz-warmup", "320", "--log-level", "warning"]
    payloads = [
        Payload(p.name, p.read_bytes(), {"classes": v, "imgsz": "320"})
        for p in coco128_images[:12]
        for v in VOCABULARIES
    ]
    with running_server(args) as server:
        proc = psutil.Process(server.process.pid)
        warm = run_load(server.url, payloads[: len(VOCABULARIES)], len(VOCABULARIES), 1)  # encode each vocabulary
        assert warm.ok == len(VOCABULARIES), (warm.statuses, server.output())
        first = run_load(server.url, payloads, 60, 8)  # allocator and caches settle
        rss_before = proc.memory_info().rss
        report = run_load(server.url, payloads, 300, 8, timeout=120)
        rss_after = proc.memory_info().rss
        stats = httpx.get(server.url + "/v1/stats").json()

        burst = run_load(server.url, payloads, 4 * QUEUE, 4 * QUEUE, timeout=120)
        after = httpx.post(
            server.url + "/v1/detect",
            files=[("images", (payloads[0].name, payloads[0].image, "image/jpeg"))],
            data=payloads[0].fields,
            timeout=60,
        )
        final = httpx.get(server.url + "/v1/stats").json()

    with capsys.disabled():
        print(f"\nload: {report.summary()}; server mean batch {stats['mean_batch_requests']:.2f} requests")
        print(f"load: RSS {rss_before / 2**20:.0f} -> {rss_after / 2**20:.0f} MiB over 300 requests")
        print(f"burst of {4 * QUEUE} at once (queue {QUEUE}): {burst.summary()}; retry-after {set(burst.retry_after)}")

    assert first.ok == 60 and not first.errors
    assert report.errors == [] and dict(report.statuses) == {200: 300}, (report.statuses, report.errors[:3])
    assert stats["errors"] == 0 and stats["rejected"] == 0 and stats["vocabularies_cached"] >= len(VOCABULARIES)
    assert stats["mean_batch_requests"] > 1.0, stats  # requests shared forward passes
    assert max(report.batch_requests) > 1
    assert rss_after - rss_before < 64 * 2**20, (rss_before, rss_after)  # flat: no per-request growth

    assert burst.errors == [], burst.errors[:3]
    assert set(burst.statuses) <= {200, 503} and burst.statuses[503] > 0 and burst.ok >= QUEUE // 2, burst.statuses
    assert all(v is not None and int(v) >= 1 for v in burst.retry_after)
    assert after.status_code == 200  # the server is fine after the burst
    assert final["rejected"] == burst.statuses[503] and final["errors"] == 0
