"""The thread rule (issue 17 item 3): threads = the cores free now, never more."""

from __future__ import annotations

import os

import pytest
import torch

from napari_resolve import threads


@pytest.fixture
def machine(monkeypatch):
    """A fake machine: usable cores, 1-min load average and runnable threads now."""
    state = {"cores": 2, "load": 0.0, "running": 1}
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(state["cores"])),
                        raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (state["load"], 0.0, 0.0))
    monkeypatch.setattr(threads, "running_now", lambda: state["running"])
    monkeypatch.delenv(threads.ENV_VAR, raising=False)
    old = torch.get_num_threads()
    yield state
    torch.set_num_threads(old)


def test_idle_machine_gets_every_usable_core(machine):
    machine.update(cores=8, load=0.1, running=1)
    assert threads.choose() == 8


def test_busy_machine_leaves_the_others_their_cores(machine):
    machine.update(cores=2, load=1.0, running=2)  # one other job running
    assert threads.choose() == 1
    machine.update(cores=8, load=3.0, running=4)
    assert threads.choose() == 5


def test_oversubscribed_machine_still_gets_one_thread(machine):
    machine.update(cores=2, load=9.3, running=9)
    assert threads.choose() == 1


def test_our_own_past_run_in_the_load_average_does_not_count(machine):
    # right after a run with 2 threads the 1-min average is still ~1.3; nothing runs now
    machine.update(cores=2, load=1.3, running=1)
    assert threads.choose() == 2


def test_a_momentary_lull_does_not_hide_a_busy_minute(machine):
    machine.update(cores=4, load=0.0, running=4)  # a burst now, but an idle minute
    assert threads.choose() == 4
    machine.update(cores=4, load=3.0, running=1)  # others between time slices right now
    assert threads.choose() == 4  # the smaller of the two: the instant says free


def test_affinity_mask_not_cpu_count(machine):
    machine.update(cores=3, load=0.0, running=1)
    assert threads.usable_cores() == 3
    assert threads.choose() == 3


def test_explicit_request_and_environment_win(machine, monkeypatch):
    machine.update(cores=2, load=9.0, running=9)
    assert threads.choose(4) == 4
    monkeypatch.setenv(threads.ENV_VAR, "3")
    assert threads.choose() == 3
    monkeypatch.setenv(threads.ENV_VAR, "many")  # unreadable: the rule decides
    assert threads.choose() == 1


def test_apply_sets_torch_threads(machine):
    machine.update(cores=2, load=1.0, running=2)
    assert threads.apply() == 1 and torch.get_num_threads() == 1
    assert threads.apply(2) == 2 and torch.get_num_threads() == 2


def test_passive_wait_policy_is_set_unless_the_user_chose(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    threads.set_passive_wait_policy()
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    threads.set_passive_wait_policy()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


def test_predict_records_the_thread_count(machine):
    import numpy as np

    from napari_resolve.predict import predict

    machine.update(cores=2, load=1.0, running=2)
    r = predict("bicubic", np.random.default_rng(0).random((20, 20)), device="cpu")
    assert r.meta["predict"]["threads"] == 1
    r = predict("bicubic", np.random.default_rng(0).random((20, 20)), device="cpu", threads=2)
    assert r.meta["predict"]["threads"] == 2
