"""Atomic file writes: every output is written to a temporary file beside it, flushed to disk
and renamed over the target, so a kill mid-write never leaves a truncated file behind.

The temporary file is created mode 0600 (mkstemp); before the rename it gets the mode any other
new file would get (0666 less the umask). A write that the system refuses (a full disk, no
permission, a read-only file system) raises ``OutputWriteError`` naming the file and its disk.
"""

import contextlib
import errno
import glob
import io
import json
import os
import shutil
import tempfile

from pretrain.runtime import faults


class OutputWriteError(OSError):
    """The system refused to write an output file; the message names the file and the disk."""


def mount_point(path):
    """The mount point of the file system holding ``path`` (or its nearest existing parent)."""
    path = os.path.abspath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    while not os.path.ismount(path):
        path = os.path.dirname(path)
    return path


def describe_write_error(path, exc):
    """``cannot write <path>: <reason>``, with the disk and its free space when it is full."""
    message = f"cannot write {path!r}: {exc.strerror or exc}"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        disk = mount_point(path)
        with contextlib.suppress(OSError):
            free = os.statvfs(disk)
            free_mib = free.f_bavail * free.f_frsize / 2**20
            message += f" (the disk mounted at {disk!r} has {free_mib:.0f} MiB free)"
    return message


def new_file_mode():
    """The mode ``open()`` gives a new file under the current umask (0666 & ~umask)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_open(path, mode="wb"):
    """Open a temporary file in ``path``'s folder; on success rename it to ``path``."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open only writes ('w' or 'wb'), got mode {mode!r}")
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder
        )
    except OSError as exc:
        raise OutputWriteError(describe_write_error(path, exc)) from exc
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            faults.reached(f"write {os.path.basename(path)}", folder)
            f.flush()
            os.fsync(f.fileno())
            os.fchmod(f.fileno(), new_file_mode())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and not isinstance(exc, OutputWriteError):
            raise OutputWriteError(describe_write_error(path, exc)) from exc
        raise


def remove_stale_temporaries(folder):
    """Delete the temporary files of writes that a kill interrupted (``.<name>.<random>.tmp``);
    returns their paths. Only call it when nothing is writing into ``folder``."""
    stale = glob.glob(os.path.join(glob.escape(folder), ".*.tmp"))
    for path in stale:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    return stale


def atomic_torch_save(obj, path):
    # Here: the tools that write no tensors start without torch (pretrain.cli).
    import torch
    from torch.utils.serialization import config

    # Without the zip's CRC-32 of each record: torch.load never checks it (a flipped byte in a
    # tensor loads either way; a truncated file is refused either way), and computing it took
    # most of a checkpoint write's CPU time (0.4x without it, docs/benchmarks.md).
    with atomic_open(path, "wb") as f, config.patch({"save.compute_crc32": False}):
        torch.save(obj, f)


def atomic_write_json(path, obj):
    with atomic_open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


def atomic_write_text(path, text):
    with atomic_open(path, "w") as f:
        f.write(text)


def figure_png(fig):
    """A matplotlib figure as PNG bytes (and closed)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    return buf.getvalue()


def check_folder_path(folder, what="folder"):
    """Refuse a folder to write into that a file stands in the way of: ``folder`` itself, or the
    nearest of its parents that exists, is a file (``what`` names the path in the message, e.g.
    ``--out``). Called before any work, where the write would only fail after it."""
    path = os.path.abspath(folder)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    if not os.path.isdir(path):
        problem = (
            "is a file, not a folder to write into"
            if path == os.path.abspath(folder)
            else f"lies under {path}, a file, not a folder"
        )
        raise NotADirectoryError(
            f"{what} {folder} {problem}: give a folder (one that does not exist yet is created)"
        )


def write_files_together(folder, files):
    """Write ``files`` ({name: str or bytes}) into ``folder`` all or nothing: each into a
    staging folder first, then all renamed into place, so that a failed write leaves the
    previous files as they were (a rename does not fail for want of space)."""
    check_folder_path(folder)
    try:
        os.makedirs(folder, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=".staging-", dir=folder)
    except OSError as exc:
        raise OutputWriteError(describe_write_error(folder, exc)) from exc
    try:
        for name, contents in files.items():
            data = contents.encode() if isinstance(contents, str) else contents
            with atomic_open(os.path.join(staging, name), "wb") as f:
                f.write(data)
        for name in files:
            os.replace(os.path.join(staging, name), os.path.join(folder, name))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
