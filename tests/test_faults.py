"""PRETRAIN_FAULT (pretrain/runtime/faults.py) acts at its point, run folder and rank only, and a
malformed value is named. The kill and hang themselves stop real runs in
tests/test_reliability.py and the study tests; here they are replaced by an exception, so a wrong
match cannot stop the test process."""

import os
import signal

import pytest

from pretrain.runtime import faults


class Fired(Exception):
    pass


@pytest.fixture
def actions(monkeypatch):
    def kill(pid, sig):
        assert pid == os.getpid()
        raise Fired(signal.Signals(sig).name)

    def killpg(group, sig):
        assert group == os.getpgrp()
        raise Fired(f"group {signal.Signals(sig).name}")

    class Event:
        def wait(self):
            raise Fired("hang")

    monkeypatch.setattr(faults.os, "kill", kill)
    monkeypatch.setattr(faults.os, "killpg", killpg)
    monkeypatch.setattr(faults.threading, "Event", Event)
    return monkeypatch


@pytest.mark.parametrize(
    "spec,point,fired",
    [
        (None, "checkpoint 8", None),
        ("kill at checkpoint 8", "checkpoint 8", "SIGKILL"),
        ("kill at checkpoint 8", "checkpoint 80", None),
        ("kill at checkpoint 8", "step 8", None),
        ("kill at checkpoint 8 on rank 0", "checkpoint 8", "SIGKILL"),
        ("kill at checkpoint 8 on rank 1", "checkpoint 8", None),  # this process is rank 0
        ("hang at step 1", "step 1", "hang"),
        ("kill at write model_0000008.pth", "write model_0000008.pth", "SIGKILL"),
        ("kill at write model_0000008.pth", "write last_checkpoint", None),
        ("kill group at checkpoint 8", "checkpoint 8", "group SIGKILL"),
        ("kill group at checkpoint 8 in /runs/a", "checkpoint 8", "group SIGKILL"),
        ("kill group at checkpoint 8 in /runs/a/", "checkpoint 8", "group SIGKILL"),
        ("kill group at checkpoint 8 in /runs/b", "checkpoint 8", None),
        ("kill group at checkpoint 8 in /runs", "checkpoint 8", None),
        ("hang at step 1 in /runs/a on rank 0", "step 1", "hang"),
        ("hang at step 1 in /runs/a on rank 1", "step 1", None),
        ("hang at checkpoint * in /runs/a", "checkpoint 12", "hang"),
        ("hang at checkpoint * in /runs/a", "step 12", None),
        ("hang at checkpoint 1* in /runs/a", "checkpoint 2", None),
        ("hang at step 3 in /runs/b; kill at step 2 in /runs/a", "step 2", "SIGKILL"),
        ("hang at step 3 in /runs/b; kill at step 2 in /runs/a", "step 3", None),
        ("kill at step 2 in /runs/b;hang at step 2", "step 2", "hang"),
    ],
)
def test_fault_acts_at_its_point_folder_and_rank_only(actions, spec, point, fired):
    if spec is None:
        actions.delenv(faults.VARIABLE, raising=False)
    else:
        actions.setenv(faults.VARIABLE, spec)
    if fired is None:
        faults.reached(point, "/runs/a")
    else:
        with pytest.raises(Fired, match=f"^{fired}$"):
            faults.reached(point, "/runs/a")


def test_malformed_fault_is_named(monkeypatch):
    monkeypatch.setenv(faults.VARIABLE, "crash at step 1")
    with pytest.raises(ValueError, match="PRETRAIN_FAULT='crash at step 1': expected"):
        faults.reached("step 1", "/runs/a")
    monkeypatch.setenv(faults.VARIABLE, "kill at step 2; crash at step 1")
    with pytest.raises(ValueError, match="several separated by ';'"):
        faults.reached("step 1", "/runs/a")
