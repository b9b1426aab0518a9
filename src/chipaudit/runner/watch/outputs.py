"""What a watch leaves for others: Prometheus metrics (a node-exporter textfile, or served on
localhost), a JSON-lines event log, and a bundle for every failure.

The metrics are one text in the exposition format (report/prometheus.py's writer), written whole
and atomically to the textfile after every burst, or parsed back into families for the HTTP server,
so that both carry the same series. The dashboard in contrib/grafana queries only what METRICS names
(tests/test_watch.py holds it to that).
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from chipaudit.errors import InputError
from chipaudit.report.model import SHARED_MODE, CheckResult, Finding, write_atomic
from chipaudit.report.prometheus import PREFIX, Writer
from chipaudit.runner.watch.burst import LEVEL

# Every family a watcher exports: (name without the prefix, type, help).
METRICS: tuple[tuple[str, str, str], ...] = (
    ("watch_bursts_total", "counter", "Verified bursts run since the watch of this device began."),
    ("watch_products_verified_total", "counter", "Matrix products verified against the host oracle."),
    ("watch_failures_total", "counter", "Bursts, samples and stack checks with a failing finding."),
    ("watch_errors_total", "counter", "Bursts that did not finish: the worker hung or died."),
    ("watch_worker_restarts_total", "counter", "Fresh workers started after one hung or died."),
    ("watch_stack_checks_total", "counter", "Comparisons of the stack with the baseline."),
    ("watch_seconds_since_last_good_burst", "gauge", "Seconds since the last burst that passed."),
    ("watch_last_burst_timestamp_seconds", "gauge", "When the last burst ended (Unix time)."),
    ("watch_duty_ratio", "gauge", "Share of wall time this watcher kept the device busy with bursts."),
    ("watch_duty_target_ratio", "gauge", "The duty the watcher keeps to (--duty)."),
    ("watch_interval_seconds", "gauge", "Seconds between bursts (--interval)."),
    ("watch_telemetry", "gauge", "What the watch's samplers read (power, temperature, ...), by metric."),
)
_KIND = {name: (kind, text) for name, kind, text in METRICS}
# Prometheus metric names: what a sampler's gauge name becomes as a label value is free, but keep it tidy.
_LABEL_VALUE = re.compile(r"[^A-Za-z0-9_.:-]")


def metric_names() -> set[str]:
    """The series names a scrape sees (counters with their _total)."""
    return {f"{PREFIX}_{name}" for name, _, _ in METRICS}


def metrics_text(device: str, values: dict[str, float], telemetry: dict[str, float]) -> str:
    """The exposition text: `values` by family name (without the prefix), `telemetry` by metric."""
    w = Writer({"device": device})
    for name, (kind, help_text) in _KIND.items():
        if name == "watch_telemetry":
            samples = [({"metric": _LABEL_VALUE.sub("_", k)}, v) for k, v in sorted(telemetry.items())]
        else:
            samples = [({}, values[name])] if name in values else []
        if samples:
            w.family(name, kind, help_text, samples)
    return "\n".join(w.lines) + "\n"


def write_textfile(path: Path, text: str) -> None:
    write_atomic(path, text, mode=SHARED_MODE)


class MetricsServer:
    """The metrics on http://127.0.0.1:PORT/metrics through prometheus_client, drawn from `text`."""

    def __init__(self, port: int, text: Callable[[], str]) -> None:
        try:
            from prometheus_client import CollectorRegistry, start_http_server
        except ImportError:
            raise InputError("--metrics-port needs prometheus_client: pip install 'chipaudit[watch]'") from None
        self._text = text
        registry = CollectorRegistry(auto_describe=False)
        registry.register(self)  # type: ignore[arg-type]
        try:
            started = start_http_server(port, addr="127.0.0.1", registry=registry)
        except OSError as e:
            raise InputError(f"--metrics-port {port}: cannot listen on 127.0.0.1:{port}: {e.strerror or e}") from None
        self._server = started[0] if isinstance(started, tuple) else None

    def collect(self) -> Iterator[Any]:
        from prometheus_client.parser import text_string_to_metric_families

        yield from text_string_to_metric_families(self._text())

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


@dataclass
class EventLog:
    """One JSON object a line, appended and flushed to disk as it happens: what a watch did, in order,
    readable while it runs and after it was killed."""

    path: Path

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def write(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"time": datetime.now(timezone.utc).isoformat(), "event": kind, **fields}
        line = json.dumps(event, default=str) + "\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
        return event


def failure_bundle(folder: Path, name: str, device: str, seed: int, replay: str, params: dict[str, Any],
                   results: list[tuple[CheckResult, list[Finding]]], key: Ed25519PrivateKey | None) -> Path:
    """A bundle for one failure, as `run --bundle` writes one (report, evidence, attestation), signed
    when the watcher holds a key; its report's replay line is the watcher's, for that burst."""
    from chipaudit.evidence.bundle import write_bundle
    from chipaudit.evidence.signing import sign_bundle
    from chipaudit.runner.audit import AuditConfig, new_report

    report = new_report(AuditConfig(device=device, level=LEVEL, seed=seed, params=params))
    report.replay = replay
    report.limits.append("A watch burst: a few products, an operator case and a memory slice, on a device busy "
                         "with other work; see runner/watch/burst.py for what a burst cannot see.")
    for result, findings in results:
        report.add(result, findings)
    report.finish(complete=True)
    path = write_bundle(report, folder / name)
    if key is not None:
        sign_bundle(path, key)
    return path
