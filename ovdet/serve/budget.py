"""The server's memory budget: bytes of request bodies and decoded images in flight, at most a fixed
total whatever the queue holds.

A request reserves its share before it reads its body (:data:`~ovdet.config.SERVE_BODY_COPIES`
times the declared length) and before it decodes (:func:`decoded_bytes` of the sizes its images'
headers declare), shrinks it as copies are dropped, and releases it when the worker no longer holds
its arrays. A reservation that cannot be made within a short wait fails, and the request is refused
(503) instead of growing the process. Nothing here knows about HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

__all__ = ["BYTES_PER_PIXEL", "DECODER_BYTES_PER_PIXEL", "MemoryBudget", "Reservation", "decoded_bytes"]

#: A decoded BGR uint8 pixel, kept from decoding until the batch's inference ends.
BYTES_PER_PIXEL = 3
#: The decoder's working copy of the image being decoded, before conversion to BGR uint8: at most
#: 16-bit RGBA (``cv2.IMREAD_UNCHANGED``), freed once converted.
DECODER_BYTES_PER_PIXEL = 8


def decoded_bytes(pixels: Sequence[int]) -> int:
    """Peak memory decoding one request's images takes, bytes.

    Args:
        pixels: width × height of each image (one request decodes them one after another).

    Returns:
        ``3 × sum(pixels)`` (the arrays kept until inference ends) ``+ 8 × max(pixels)`` (the
        decoder's copy of the image being decoded).
    """
    return BYTES_PER_PIXEL * sum(pixels) + DECODER_BYTES_PER_PIXEL * max(pixels, default=0)


class MemoryBudget:
    """At most ``capacity`` bytes reserved at a time, shared by all requests.

    Used from the event loop's thread only (no locks): release from another thread through
    ``loop.call_soon_threadsafe``.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self.refused = 0  # reservations that did not fit in time
        self._waiters: list[asyncio.Future] = []

    def reservation(self) -> Reservation:
        """A new, empty reservation (0 bytes) of this budget."""
        return Reservation(self)

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)

    async def _take(self, n: int, wait_s: float) -> bool:
        """Reserve ``n`` more bytes, waiting up to ``wait_s`` seconds for others to release."""
        if n <= 0:
            self.used += n
            self._wake()
            return True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while self.used + n > self.capacity:
            left = deadline - loop.time()
            if n > self.capacity or left <= 0:
                self.refused += 1
                return False
            waiter = loop.create_future()
            self._waiters.append(waiter)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter, left)
            if waiter in self._waiters:  # timed out: no release woke it
                self._waiters.remove(waiter)
        self.used += n
        return True


class Reservation:
    """One request's share of a :class:`MemoryBudget`, in bytes (``held``)."""

    def __init__(self, budget: MemoryBudget) -> None:
        self.budget = budget
        self.held = 0

    async def resize(self, n: int, wait_s: float) -> bool:
        """Hold ``n`` bytes from now on: shrinking always succeeds at once; growing waits up to
        ``wait_s`` seconds for room and returns False (holding what it held) when there is none."""
        if not await self.budget._take(n - self.held, wait_s):
            return False
        self.held = n
        return True

    def release(self) -> None:
        """Give everything back (idempotent)."""
        if self.held:
            self.budget.used -= self.held
            self.held = 0
            self.budget._wake()
