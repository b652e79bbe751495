"""The console mode of the local executor (``tools/study.py --console``; what `make demo` runs):
each stage opens with a header (its number, its id, what it runs, the time since the study
started), its tool's output streams to the console (Detectron2's trimmed to progress and result
lines) while all of it goes to the stage's log, a stage silent for ``HEARTBEAT_S`` says that it
is still running, and each stage ends with its wall and CPU time."""

import queue
import re
import resource
import threading
import time

from pretrain.cli import setup_cfg

# A stage silent for this long prints that it is still running: a detection run's evaluation,
# or a slow machine, would otherwise look like a hang.
HEARTBEAT_S = 30
INDENT = "      "
# What the console shows of a detect stage's output: Detectron2 logs every model and data
# setting, which would bury the progress (eta) and the results.
D2_SHOW = re.compile(
    r"eta: |Inference done|copypaste|Total inference time|Overall training|"
    r"Traceback|Error|error:|wrote"
)


def fmt_time(seconds):
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


def children_cpu():
    """User + system CPU seconds of the finished child processes (the stages run so far)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def describe(plan, stage):
    """What ``stage`` runs, in a few words, as its tool's config says it."""
    if stage.kind == "data":
        s = plan.study.data["synthetic"][stage.part]
        if stage.part == "classification":
            return (
                f"{s['classes']} classes, {s['train_per_class']} train / {s['val_per_class']} "
                f"val images each, {s['size']} px"
            )
        return (
            f"VOC2007 trainval {s['trainval07']} / test {s['test07']}, VOC2012 trainval "
            f"{s['trainval12']} images"
        )
    if stage.kind == "pretrain":
        b = stage.backbone
        cfg = setup_cfg(b.config, b.opts + (plan.search_opts(stage) or []))
        return f"{cfg.MODEL.ARCH}, {cfg.SOLVER.EPOCHS} epochs"
    if stage.kind == "convert":
        return "to Detectron2"
    if stage.kind == "detect":
        from detection.config import setup_detection_cfg  # Detectron2: only where it runs

        cfg, _ = setup_detection_cfg(*plan.tool_config(stage))
        return f"Faster R-CNN, {cfg.SOLVER.MAX_ITER} iterations"
    return f"Table 5 from {len(plan.detect)} detection runs"


class Console:
    """The console of one ``run_local``: ``open`` before a stage, ``follow`` its tool's output,
    ``close`` after it."""

    def __init__(self, plan):
        self.plan, self.start, self.cpu0 = plan, time.time(), 0.0

    def open(self, prefix, stage, continuing):
        what = describe(self.plan, stage) + ("; resuming" if continuing else "")
        elapsed = fmt_time(time.time() - self.start)
        print(f"{prefix} {stage.id} ({what})  (elapsed {elapsed})", flush=True)
        self.cpu0 = children_cpu()

    def close(self, seconds):
        # CPU time far below wall time x cores: the machine is busy with something else.
        cpu = children_cpu() - self.cpu0
        print(f"{INDENT}done in {seconds:.1f} s (CPU {cpu:.1f} s)", flush=True)

    def follow(self, proc, log, stage):
        """Copy the output of ``proc`` (a text pipe) to the file ``log``, and the lines the
        console shows of ``stage`` to the console, until it ends; its exit code."""
        show = D2_SHOW if stage.kind == "detect" else None
        lines = queue.Queue()

        def pump():  # a thread, so that a silent tool still gets its heartbeat
            for line in proc.stdout:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=pump, daemon=True).start()
        started = last_shown = time.time()
        while True:
            try:
                line = lines.get(timeout=1.0)
            except queue.Empty:
                if time.time() - last_shown >= HEARTBEAT_S:
                    running = fmt_time(time.time() - started)
                    print(f"{INDENT}... still running ({running} in this stage)", flush=True)
                    last_shown = time.time()
                continue
            if line is None:
                return proc.wait()
            log.write(line)
            log.flush()
            if show is None or show.search(line):
                print(INDENT + line.rstrip()[:200], flush=True)
                last_shown = time.time()
