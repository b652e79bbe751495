"""Fault injection: ``PRETRAIN_FAULT`` makes a process die or hang at a named point of a run, so
that the reliability tests stop a run exactly there instead of watching its files and sending a
signal in time (which a loaded machine makes miss).

    PRETRAIN_FAULT="kill at write model_0000008.pth"   SIGKILL once that file's bytes are in its
                                                      temporary file, before the rename
    PRETRAIN_FAULT="kill at checkpoint 8 on rank 1"   SIGKILL rank 1 once checkpoint 8 is complete
    PRETRAIN_FAULT="hang at step 1 on rank 1"         rank 1 stays alive after its first training
                                                      step but never answers again (a frozen
                                                      node): only a signal ends it
    PRETRAIN_FAULT="hang at checkpoint * in /x/pretrain/baseline/seed0"
                                                      hang after every checkpoint of that run
                                                      (a point is a shell-style pattern)
    PRETRAIN_FAULT="kill group at checkpoint 4 in /x/pretrain/tfkd/seed0"
                                                      SIGKILL the whole process group (the run and
                                                      whatever started it in that group, e.g. a
                                                      study: a node failure), only in the run
                                                      whose OUTPUT_DIR is /x/pretrain/tfkd/seed0

Several faults, separated by ``;``, each act at their own point (two stages of one study
stopped in one submission): ``"hang at checkpoint 3 in /x/a; hang at checkpoint 1 in /x/b"``.

The code names its points with ``reached``: ``write <file name>`` in every atomic write,
``step <iteration>`` after each training step, ``checkpoint <iteration>`` on every rank once a
checkpoint is written (also in tools/train_net.py, for Detectron2's ``model_<iteration>.pth``:
``detection.resume``), each with the run folder it is in; "in <folder>" limits a fault to one
run folder, where several runs share the environment (the stages of a study). Without the
variable (every normal run) ``reached`` does nothing.
"""

import fnmatch
import os
import re
import signal
import threading

VARIABLE = "PRETRAIN_FAULT"
_SPEC = re.compile(r"(kill|kill group|hang) at (.+?)(?: in (.+?))?(?: on rank (\d+))?")


def reached(point, run_folder):
    """Die or hang here if ``PRETRAIN_FAULT`` names ``point`` (and this run folder and rank, if
    it names them)."""
    spec = os.environ.get(VARIABLE)
    if not spec:
        return
    for fault in spec.split(";"):
        match = _SPEC.fullmatch(fault.strip())
        if match is None:
            raise ValueError(
                f"{VARIABLE}={spec!r}: expected '<kill|kill group|hang> at <point>[ in <run "
                f"folder>][ on rank <r>]', several separated by ';'"
            )
        action, where, folder, rank = match.groups()
        if not fnmatch.fnmatchcase(point, where):
            continue
        # Imported here: pretrain.runtime.fileio, which every tool imports, imports this module,
        # and a tool that needs no torch starts without it (pretrain.cli).
        from pretrain.runtime import distributed as du

        if rank is not None and int(rank) != du.get_rank():
            continue
        if folder is not None and os.path.realpath(folder) != os.path.realpath(run_folder):
            continue
        if action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if action == "kill group":
            os.killpg(os.getpgrp(), signal.SIGKILL)
        threading.Event().wait()  # hang: an event nothing sets; only a signal ends the process
