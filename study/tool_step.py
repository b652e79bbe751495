"""One step of the demo (study/demo.py): a tool of the project run as a subprocess, its output
streamed to the console and, in full, to the step's log file."""

import os
import queue
import resource
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(ROOT, "tools")
# A step silent for this long prints that it is still running.
HEARTBEAT_S = 30


class StepFailed(Exception):
    pass


class Step:
    """A line of the demo's plan: its stage (data, pretrain, ...), the title printed for it, and
    ``run(step)``, which does the work; the demo fills in its status, times and log."""

    def __init__(self, stage, title, run, needs_d2=False):
        self.stage, self.title, self.run, self.needs_d2 = stage, title, run, needs_d2
        self.status, self.seconds, self.cpu_seconds, self.log = "pending", None, None, None


def run_tool(step, name, args, show=None):
    """Run tools/``name`` with ``args`` from the project root, streaming its output (the lines
    ``show`` accepts, all when None) to the console and all of it to ``step.log``; raise
    StepFailed, with the tool's last ``error:`` line, if it fails."""
    cmd = [sys.executable, os.path.join(TOOLS, name)] + [str(a) for a in args]
    # Unbuffered, so progress streams as it happens.
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(step.log, "a") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        lines = queue.Queue()

        def pump():
            for line in proc.stdout:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=pump, daemon=True).start()
        last_shown, started, last_error = time.time(), time.time(), None
        try:
            while True:
                try:
                    line = lines.get(timeout=1.0)
                except queue.Empty:
                    if time.time() - last_shown >= HEARTBEAT_S:
                        print(
                            f"      ... still running ({fmt_time(time.time() - started)} in this "
                            "step)",
                            flush=True,
                        )
                        last_shown = time.time()
                    continue
                if line is None:
                    break
                log.write(line)
                log.flush()
                if line.startswith("error:"):
                    last_error = line.strip()
                if show is None or show.search(line):
                    print("      " + line.rstrip()[:200], flush=True)
                    last_shown = time.time()
            rc = proc.wait()
        except BaseException:
            proc.terminate()
            proc.wait()
            raise
    if rc != 0:
        raise StepFailed(
            f"{name} exited with code {rc}" + (f"\n  {last_error}" if last_error else "")
        )


def children_cpu():
    """User + system CPU seconds of the finished child processes (the tools run so far)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def fmt_time(seconds):
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


def shell_path(path):
    """``path`` relative to the working directory when it is inside it (for printed commands)."""
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel
