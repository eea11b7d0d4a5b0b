"""TensorBoard scalar events without TensorBoard: the event-file format written directly.

An event file is a sequence of TFRecords (length, masked CRC-32C of the length, the bytes, their
masked CRC-32C) holding ``Event`` protocol buffers; a scalar is an ``Event`` with a ``Summary``
of one ``simple_value``. The few fields needed are encoded here by hand, so training logs for
TensorBoard need neither TensorBoard nor protobuf installed; ``tensorboard --logdir runs/train``
reads them.
"""

from __future__ import annotations

import socket
import struct
import time
from pathlib import Path

__all__ = ["EventWriter", "crc32c"]


def _crc_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1  # Castagnoli polynomial, reflected
        table.append(c)
    return table


_TABLE = _crc_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) of ``data``, as TFRecord framing uses."""
    c = 0xFFFFFFFF
    for b in data:
        c = _TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def _masked(crc: int) -> int:
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, wire: int, payload: bytes) -> bytes:
    key = _varint((number << 3) | wire)
    if wire == 2:  # length-delimited
        return key + _varint(len(payload)) + payload
    return key + payload


def _event(
    wall_time: float, step: int, *, file_version: str | None = None, scalar: tuple[str, float] | None = None
) -> bytes:
    msg = _field(1, 1, struct.pack("<d", wall_time)) + _field(2, 0, _varint(step))
    if file_version is not None:
        msg += _field(3, 2, file_version.encode())
    if scalar is not None:
        tag, value = scalar
        value_msg = _field(1, 2, tag.encode()) + _field(2, 5, struct.pack("<f", value))
        msg += _field(5, 2, _field(1, 2, value_msg))  # Event.summary = Summary{value: [Value]}
    return msg


class EventWriter:
    """Appends scalars to ``<folder>/events.out.tfevents.<time>.<host>``.

    Args:
        folder: the log folder (created).
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}"
        self._file = open(self.path, "ab")  # noqa: SIM115 - kept open for the run, closed by close()
        self._write(_event(time.time(), 0, file_version="brain.Event:2"))

    def scalar(self, tag: str, value: float, step: int) -> None:
        """Record ``value`` under ``tag`` at ``step``."""
        self._write(_event(time.time(), int(step), scalar=(tag, float(value))))

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def _write(self, data: bytes) -> None:
        length = struct.pack("<Q", len(data))
        self._file.write(
            length + struct.pack("<I", _masked(crc32c(length))) + data + struct.pack("<I", _masked(crc32c(data)))
        )
