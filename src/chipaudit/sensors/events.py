"""What a sensor saw, and whether it could look at all.

A device workload has no business talking to anyone or writing anything. Each sensor turns what it
observed into `Event`s; the checks decide what each event means. Every sensor also reports a
`SensorStatus`, so that a report never claims coverage that did not happen.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

NETWORK, FILE, PROCESS = "network", "file", "process"


@dataclass(frozen=True)
class Event:
    sensor: str  # strace | sockets | sinkhole | ebpf | reaper
    kind: str  # network | file | process
    action: str  # the syscall, or what the sampler or capture saw ("socket", "packet", "lingering")
    target: str  # destination ("AF_INET 127.0.0.1:47555", "AF_UNIX /run/x"), file path, or program
    pid: int = 0
    time: float = 0.0  # wall-clock seconds since the epoch, by the host's real clock
    failed: str = ""  # the errno when the attempt failed; an attempt is still an event
    family: str = ""  # address family of a network event
    detail: str = ""  # the sensor's own record (a strace line, a packet summary), trimmed

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in ("", 0, 0.0)}


@dataclass
class SensorStatus:
    name: str
    ran: bool
    detail: str  # what it watched, or why it did not run

    def as_dict(self) -> dict[str, Any]:
        return {"ran": self.ran, "detail": self.detail}


@dataclass
class Observation:
    """Everything the sensors recorded around one workload process tree."""

    events: list[Event] = field(default_factory=list)
    sensors: list[SensorStatus] = field(default_factory=list)
    pids: set[int] = field(default_factory=set)  # every process of the tree a sensor saw
