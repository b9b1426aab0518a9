"""Sensors around device workloads: what a process tree does besides computing (strace, a socket and
open-file sampler, packet capture in a sealed namespace), who else holds the device, and the device's
own telemetry. Each reports whether it ran; see events.py."""
