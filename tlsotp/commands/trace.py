"""The teaching view: each handshake message as it goes, with its decoded public fields.

The sans-I/O core reports ``TraceRecord``s (never secrets); this module adds the time since
the session started and the arrow for the direction, and prints a cost summary at the end.
"""

from __future__ import annotations

import time
from typing import Callable, TextIO

from tlsotp.handshake import TraceRecord
from tlsotp.services.channel import ChannelStats


class TracePrinter:
    """An observer for ``ClientConfig``/``ServerConfig`` that writes one block per message."""

    def __init__(self, out: TextIO, *, local: str = "C", remote: str = "S", clock: Callable[[], float] = time.monotonic) -> None:
        self._out = out
        self._local = local
        self._remote = remote
        self._clock = clock
        self._started = clock()

    def __call__(self, record: TraceRecord) -> None:
        elapsed_ms = (self._clock() - self._started) * 1000
        if record.direction == "send":
            arrow = f"{self._local} -> {self._remote}"
        else:
            arrow = f"{self._local} <- {self._remote}"
        self._out.write(f"[{elapsed_ms:8.1f} ms] {arrow}  {record.kind} ({record.size} bytes)\n")
        for name, value in record.fields.items():
            self._out.write(f"{'':14}{name}: {value}\n")
        self._out.flush()


def summarise(stats: ChannelStats, suite_name: str) -> str:
    """One paragraph of what the session cost: bytes, frames, round trips, time and CPU."""
    lines = [
        f"suite:        {suite_name}",
        f"sent:         {stats.bytes_sent} bytes in {stats.frames_sent} frames",
        f"received:     {stats.bytes_received} bytes in {stats.frames_received} frames",
        f"round trips:  {stats.flights_received} (flights received from the peer)",
    ]
    if stats.handshake_seconds is not None:
        lines.append(f"handshake:    {stats.handshake_seconds * 1000:.1f} ms wall")
    if stats.handshake_cpu_seconds is not None:
        lines.append(f"handshake CPU in this process: {stats.handshake_cpu_seconds * 1000:.1f} ms")
    lines.append(f"session:      {stats.elapsed() * 1000:.1f} ms wall")
    return "\n".join(lines)
