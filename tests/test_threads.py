"""Runs sharing a machine split its physical cores instead of oversubscribing them."""
from __future__ import annotations

import subprocess

import pytest
import torch

from petlbench.engine import threads
from petlbench.errors import UserError


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.delenv(threads.THREADS_ENV, raising=False)
    before = torch.get_num_threads()
    threads.register()
    yield
    threads.unregister()
    torch.set_num_threads(before)


def test_a_second_run_halves_the_share_and_its_end_restores_it(registered):
    cores = threads.physical_cores()
    if cores < 2:
        pytest.skip("one core: nothing to split")
    assert threads.rebalance() == cores == torch.get_num_threads()
    other = subprocess.Popen(["sleep", "60"])  # a second petlbench run, as the ledger sees it
    try:
        (threads.ledger() / str(other.pid)).touch()
        assert threads.rebalance() == max(1, cores // 2) == torch.get_num_threads()
    finally:
        other.kill()
        other.wait()
    assert threads.rebalance() == cores, "a dead run's entry is cleared and the share grows back"
    assert not (threads.ledger() / str(other.pid)).exists()


def test_a_fixed_count_wins_and_a_bad_one_is_refused(registered, monkeypatch):
    monkeypatch.setenv(threads.THREADS_ENV, "1")
    assert threads.rebalance() == 1 == torch.get_num_threads()
    monkeypatch.setenv(threads.THREADS_ENV, "two")
    with pytest.raises(UserError, match="PETLBENCH_THREADS"):
        threads.rebalance()


def test_physical_cores_respect_the_affinity(monkeypatch):
    import os
    allowed = len(os.sched_getaffinity(0))
    assert 1 <= threads.physical_cores() <= allowed
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})  # `taskset -c 0`, a one-CPU container
    assert threads.physical_cores() == 1
