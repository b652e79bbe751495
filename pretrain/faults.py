"""Fault injection: ``PRETRAIN_FAULT`` makes a process die or hang at a named point of a run, so
that the reliability tests stop a run exactly there instead of watching its files and sending a
signal in time (which a loaded machine makes miss).

    PRETRAIN_FAULT="kill at write model_0000008.pth"   SIGKILL once that file's bytes are in its
                                                      temporary file, before the rename
    PRETRAIN_FAULT="kill at checkpoint 8 on rank 1"   SIGKILL rank 1 once checkpoint 8 is complete
    PRETRAIN_FAULT="hang at step 1 on rank 1"         rank 1 stays alive after its first training
                                                      step but never answers again (a frozen
                                                      node): only a signal ends it

The code names its points with ``reached``: ``write <file name>`` in every atomic write,
``step <iteration>`` after each training step, ``checkpoint <iteration>`` on every rank once a
checkpoint is written. Without the variable (every normal run) ``reached`` does nothing.
"""

import os
import re
import signal
import threading

from . import distributed as du

VARIABLE = "PRETRAIN_FAULT"
_SPEC = re.compile(r"(kill|hang) at (.+?)(?: on rank (\d+))?")


def reached(point):
    """Die or hang here if ``PRETRAIN_FAULT`` names ``point`` (and this rank, if it names one)."""
    spec = os.environ.get(VARIABLE)
    if not spec:
        return
    match = _SPEC.fullmatch(spec.strip())
    if match is None:
        raise ValueError(f"{VARIABLE}={spec!r}: expected '<kill|hang> at <point>[ on rank <r>]'")
    action, where, rank = match.groups()
    if where != point or (rank is not None and int(rank) != du.get_rank()):
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    threading.Event().wait()  # hang: an event nothing sets; only a signal ends the process
