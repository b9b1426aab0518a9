"""Sensors around device workloads: what a process tree does besides computing (the sinkhole's
packet capture, a socket and open-file sampler, strace; watch.py gathers those a process cannot
see), who else holds the device, and the device's own telemetry. Each reports whether it ran; see
events.py."""
