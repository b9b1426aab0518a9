"""The stack category: inventory, fingerprint, baselines and capability scan of what runs the device."""
