"""The engine: one run, start to record (training loop, feature and prefix caches, devices, threads)."""
