"""CPU threads: one run uses the machine's physical cores; runs sharing a machine split them.

Every run registers its process in a ledger (one file per process in a per-user temp folder) and uses
physical cores / live runs threads, re-read at every epoch, so a second `petlbench run` on the same box
makes both shrink instead of oversubscribing the cores (3-5x slower each, measured), and the survivor
grows back when the other ends. `PETLBENCH_THREADS=N` (set by `--workers`) fixes the number instead.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from petlbench.errors import UserError

THREADS_ENV = "PETLBENCH_THREADS"
_registered: Path | None = None


def physical_cores() -> int:
    """Physical cores this process may use: hyper-threads count once, the CPU affinity (containers, taskset) caps."""
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        pairs, physical = set(), None
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "physical id":
                physical = value.strip()
            elif key.strip() == "core id":
                pairs.add((physical, value.strip()))
        cores = len(pairs) or allowed
    except OSError:
        cores = allowed
    return max(1, min(cores, allowed))


def ledger() -> Path:
    return Path(tempfile.gettempdir()) / f"petlbench-{os.getuid()}-runs"


def live_runs() -> int:
    """Processes registered in the ledger that are still alive (the files of dead ones are removed)."""
    alive = 0
    for entry in ledger().glob("*"):
        try:
            os.kill(int(entry.name), 0)
            alive += 1
        except ProcessLookupError:
            entry.unlink(missing_ok=True)
        except (ValueError, PermissionError):
            continue
    return max(alive, 1)


def register() -> int:
    """Enter this process in the ledger (once) and take its share of the cores; returns the thread count."""
    global _registered
    if _registered is None:
        folder = ledger()
        folder.mkdir(parents=True, exist_ok=True)
        _registered = folder / str(os.getpid())
        _registered.touch()
    return rebalance()


def rebalance() -> int:
    """Set torch's intra-op threads to this process's share now; a no-op count outside a registered run."""
    fixed = os.environ.get(THREADS_ENV, "").strip()
    if fixed:
        if not fixed.isdigit() or int(fixed) < 1:
            raise UserError(f"${THREADS_ENV}: expected a positive integer, got {fixed!r}")
        threads = int(fixed)
    elif _registered is not None:
        threads = max(1, physical_cores() // live_runs())
    else:
        return torch.get_num_threads()
    if threads != torch.get_num_threads():
        torch.set_num_threads(threads)
    return threads


def unregister() -> None:
    global _registered
    if _registered is not None:
        _registered.unlink(missing_ok=True)
        _registered = None
