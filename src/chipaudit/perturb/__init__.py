"""Changed worlds for device workloads: no network, a shifted clock, another time zone or locale,
applied to the workload process alone and checked from inside it (conditions.py)."""
