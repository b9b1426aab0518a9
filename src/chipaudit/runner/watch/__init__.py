"""`chipaudit watch`: a device audited continuously, in production, at a cost its workload does not
notice. burst.py is what one burst checks (its contract), worker.py the long-lived child that runs
the bursts, loop.py the watcher (duty, lifecycle, samplers, stack drift), state.py its place in the
store, outputs.py its metrics, event log and failure bundles.
"""

from chipaudit.runner.watch.loop import WatchConfig, Watcher

__all__ = ["WatchConfig", "Watcher"]
