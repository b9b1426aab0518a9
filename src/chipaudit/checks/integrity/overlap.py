"""The burn-in's comparisons, kept off the device's critical path.

A burn-in exists to load the device fully, so nothing it verifies may make the device wait:
- the device's own comparison of each result with its golden result is queued behind the product and
  read back later, a few products behind (IN_FLIGHT), through a flag copied into host memory: the host
  never synchronises with the device except to keep that queue bounded, and the device always has
  queued work;
- a secretly chosen share of the results is copied to the host without blocking, on a stream of its
  own, into pinned memory, and compared with the host's golden copy on a host thread while the device
  keeps multiplying.

Secrecy holds as before: which results are copied is decided by the host's secret generator after
the product was queued, and the copy is ordered after the device's comparison of the same result, so
the device has handed the result over before it could know whether it is checked; the result is not
written again before the copy ends (the caching allocator is told the copy stream uses it).

On the CPU the host is the device: each result is compared with NumPy as soon as it exists (it already
sits in host memory, and torch's comparison kernels are the very kernels a fault may replace), and the
secret share is copied by the loop and compared on a host thread, as on an accelerator.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

# Results queued on the device whose comparison the host has not read yet. Two would keep an
# accelerator busy (one runs while the next is queued); a few more absorb the host loop's hiccups.
IN_FLIGHT = 4
# Host copies of the secret share that may be on their way or being compared at once; a result chosen
# while all are busy is not copied (listed in `host_skipped`), so the host's pace never holds the device.
HOST_BUFFERS = 2

_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def same_bits(x: np.ndarray, y: np.ndarray) -> bool:
    """Bitwise equality, compared in the widest words the size allows."""
    word = np.uint64 if x.nbytes % 8 == 0 else np.uint8
    return x.shape == y.shape and np.array_equal(np.ascontiguousarray(x).view(word), np.ascontiguousarray(y).view(word))


def host_array(t: torch.Tensor) -> np.ndarray:
    """A CPU tensor's bits as a NumPy array (bf16 and fp8 through same-sized integers)."""
    t = t.contiguous()
    if t.dtype in (torch.bfloat16, *(d for d in (getattr(torch, "float8_e4m3fn", None),) if d is not None)):
        t = t.view(_BITS[t.element_size()])
    return t.numpy()


def device_differs(c: torch.Tensor, golden: torch.Tensor) -> torch.Tensor:
    """The device's own comparison, as a one-element tensor on the device: nonzero when any bit differs."""
    word = _BITS[c.element_size()]
    return torch.ne(c.view(word), golden.view(word)).any()


@dataclass
class _Queued:
    serial: int
    c: torch.Tensor
    golden_bits: np.ndarray
    tag: Any
    slot: int
    event: Any  # the device event after the comparison; None where the host already knows the answer
    differs: bool | None = None  # known at once on the CPU


class Comparisons:
    """Every result's comparison with its golden one, and the secret host checks, without stalling.

    `submit` queues one result; `on_differ(tag, c)` is called in the submitting thread, with the result
    still alive, for each result whose bits the device (or, on the CPU, the host) found different from
    the golden one. `completed` counts results whose comparison has been read, `host_checked` the tags
    of those copied to the host. Host checks run on a thread; after `drain`, `disagreements` lists the
    tags of results the device called identical but the host did not.
    """

    def __init__(self, device: str, on_differ: Callable[[Any, torch.Tensor], None]) -> None:
        self.device = torch.device(device)
        self.cpu = self.device.type == "cpu"
        self.on_differ = on_differ
        self.completed = 0
        self.host_checked: list[Any] = []  # the tags of the results copied to the host
        self.host_skipped: list[Any] = []  # the tags of results chosen while every host buffer was busy
        self.disagreements: list[Any] = []
        self._queue: deque[_Queued] = deque()
        self._said_identical: dict[int, bool] = {}  # host-checked result -> the device's own answer
        self._host_same: dict[int, tuple[Any, bool]] = {}
        self._lock = threading.Lock()
        self._pending: list[Future[None]] = []
        self._free = threading.Semaphore(HOST_BUFFERS)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="burnin-host-check")
        self._serial = 0
        module = getattr(torch, self.device.type, None)
        streams = not self.cpu and all(hasattr(module, a) for a in ("Event", "Stream", "stream"))
        self._module = module if streams else None
        self._copy_stream = module.Stream(device=self.device) if streams else None
        self._flags = _host_buffer((IN_FLIGHT + 1,), torch.bool, pinned=streams)
        self._slot = 0

    def submit(self, c: torch.Tensor, golden: torch.Tensor, golden_bits: np.ndarray, tag: Any,
               host_check: bool) -> None:
        """Queue the comparison of result `c` with `golden` (on the device) and `golden_bits` (its bits on
        the host, host_array's form); `host_check`: this result is one of the secret share."""
        self._serial += 1
        if self.cpu or self._module is None:  # the answer now: on the host, or where there are no events
            item = _Queued(self._serial, c, golden_bits, tag, 0, None, self.differs_now(c, golden, golden_bits))
        else:
            slot, self._slot = self._slot, (self._slot + 1) % len(self._flags)
            self._flags[slot].copy_(device_differs(c, golden), non_blocking=True)
            event = self._module.Event()
            event.record()
            item = _Queued(self._serial, c, golden_bits, tag, slot, event)
        if host_check:
            self._hand_over(item)
        self._queue.append(item)
        while len(self._queue) > IN_FLIGHT or (self._queue and self._done(self._queue[0])):
            self._resolve(self._queue.popleft())

    def differs_now(self, c: torch.Tensor, golden: torch.Tensor, golden_bits: np.ndarray) -> bool:
        """The comparison read at once: NumPy's on the CPU, the device's on a backend without events."""
        return not same_bits(host_array(c), golden_bits) if self.cpu else bool(device_differs(c, golden))

    def drain(self) -> None:
        """Read every queued comparison and wait for the host checks; the verdicts are then final."""
        while self._queue:
            self._resolve(self._queue.popleft())
        for f in self._pending:
            f.result()
        self._pending.clear()
        with self._lock:
            for serial, (tag, same) in self._host_same.items():
                if not same and self._said_identical.get(serial, False):
                    self.disagreements.append(tag)
            self._host_same.clear()

    def close(self) -> None:
        self.drain()
        self._pool.shutdown(wait=True)

    def _done(self, item: _Queued) -> bool:
        return item.event is None or bool(item.event.query())

    def _resolve(self, item: _Queued) -> None:
        if item.differs is None:
            item.event.synchronize()
            item.differs = bool(self._flags[item.slot])
        with self._lock:
            if item.serial in self._said_identical:
                self._said_identical[item.serial] = not item.differs
        self.completed += 1
        if item.differs:
            self.on_differ(item.tag, item.c)

    def _hand_over(self, item: _Queued) -> None:
        if not self._free.acquire(blocking=False):
            self.host_skipped.append(item.tag)
            return
        self._pending = [f for f in self._pending if not f.done() or f.exception() is not None]
        self.host_checked.append(item.tag)
        c = item.c
        with self._lock:
            self._said_identical[item.serial] = False  # until the device's answer is read
        if self._copy_stream is None:
            copy, ready = host_array(c).copy(), None  # the host's own copy: nothing can change it now
        else:
            assert self._module is not None
            after = self._module.Event()
            after.record()  # after the device's comparison of this result
            self._copy_stream.wait_event(after)
            with self._module.stream(self._copy_stream):
                buffer = _host_buffer(tuple(c.shape), c.dtype, pinned=True)
                buffer.copy_(c, non_blocking=True)
                ready = self._module.Event()
                ready.record(self._copy_stream)
            c.record_stream(self._copy_stream)
            copy = buffer
        self._pending.append(self._pool.submit(self._compare, item, copy, ready))

    def _compare(self, item: _Queued, copy: np.ndarray | torch.Tensor, ready: Any) -> None:
        try:
            if ready is not None:
                ready.synchronize()
            same = same_bits(host_array(copy) if isinstance(copy, torch.Tensor) else copy, item.golden_bits)
            with self._lock:
                self._host_same[item.serial] = (item.tag, same)
        finally:
            self._free.release()


def _host_buffer(shape: tuple[int, ...], dtype: torch.dtype, pinned: bool) -> torch.Tensor:
    """Host memory for copies from the device: pinned where the device can copy into it directly."""
    if pinned:
        try:
            return torch.empty(shape, dtype=dtype, pin_memory=True)
        except RuntimeError:
            pass
    return torch.empty(shape, dtype=dtype)
