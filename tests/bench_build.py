#!/usr/bin/env python3
"""Time petlbench.data.build.identify (README, Data builds) on a sun397-sized NOAH task: lists of 800, 200, 1,000
and 21,750 lines, 400x300 JPEGs where the fingerprint samples. Cold (first call in the process), then warm (the
verdict kept per process). Usage: python tests/bench_build.py EMPTY_DIR"""
import io
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from petlbench.data.build import identify

root = Path(sys.argv[1]) / "sun397"
blob = io.BytesIO()
Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8)).save(blob, "JPEG")
for split, n in {"train800": 800, "val200": 200, "train800val200": 1000, "test": 21750}.items():
    rels = [f"images/{split}/{i:06d}.jpg" for i in range(n)]
    for rel in (rels[0], rels[-1]):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(blob.getvalue())
    (root / f"{split}.txt").write_text("".join(f"{r} {i % 397}\n" for i, r in enumerate(rels)))
for label in ("cold", "warm", "warm"):
    start = time.perf_counter()
    build = identify(root)
    print(f"{label}: {1000 * (time.perf_counter() - start):.1f} ms, {build.name}")
