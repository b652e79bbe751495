"""Command-line set-up shared by the tools: argument parser, config assembly, and the one way a
tool ends on a user's mistake or an interruption (``tool``)."""

import argparse
import difflib
import functools
import re
import signal
import sys

import yaml

from pretrain.runtime.fileio import OutputWriteError

# A user's mistake (a config value, a file or folder given, an image, weights, a flag) or a write
# the system refuses: the message names the file, key or cause, and a traceback would only hide
# it. FloatingPointError: training diverged, which a lower learning rate fixes.
EXPECTED_ERRORS = (
    ValueError,
    FileNotFoundError,
    NotADirectoryError,
    IsADirectoryError,
    FloatingPointError,
    OutputWriteError,
)


def tool(main):
    """Decorate a tool's ``main``: an expected error (EXPECTED_ERRORS) ends it with one ``error:``
    line and status 1, Ctrl-C or SIGTERM with one ``interrupted`` line and status 128 + the
    signal's number. Anything else is a bug of ours and keeps its traceback. A tool may catch
    these first to log them (in its run folder) and raise them again."""

    @functools.wraps(main)
    def run(*args, **kwargs):
        stop_on_termination()
        try:
            return main(*args, **kwargs)
        except KeyboardInterrupt as exc:
            status, name = interrupted(exc)
            print(f"interrupted ({name})", file=sys.stderr)
            sys.exit(status)
        except EXPECTED_ERRORS as exc:
            sys.exit(f"error: {error_message(exc)}")

    return run


def default_argument_parser(description):
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config-file", required=True, metavar="FILE", help="YAML config")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from OUTPUT_DIR's newest readable checkpoint",
    )
    parser.add_argument(
        "--eval-only",
        action="store_true",
        help="only evaluate MODEL.WEIGHTS (our checkpoint or torchvision weights)",
    )
    parser.add_argument(
        "opts",
        nargs=argparse.REMAINDER,
        metavar="KEY VALUE",
        help="config overrides, e.g. SOLVER.EPOCHS 10 OUTPUT_DIR out/run1",
    )
    return parser


def setup_cfg(config_file, opts=()):
    """The pretraining config: defaults <- YAML file (with _BASE_; none: the defaults) <- KEY VALUE
    overrides, validated (pretrain.config.checks) and frozen."""
    # Imported here: the config's choices live with the torch code that implements them, and a
    # tool that reads no pretraining config (tools/make_synthetic_data.py) starts without torch.
    from pretrain.config.checks import validate_config
    from pretrain.config.defaults import get_cfg

    cfg = get_cfg()
    merge_config(cfg, config_file, opts)
    validate_config(cfg)
    cfg.freeze()
    return cfg


def merge_config(cfg, config_file, opts=()):
    """Merge a YAML file (None: none) and KEY VALUE overrides into ``cfg`` (ours or Detectron2's,
    both fvcore CfgNodes); a missing file, bad YAML, an unknown key, a value of the wrong type or
    a stray flag is a ValueError or FileNotFoundError naming where it came from."""
    flags = [o for o in opts if o.startswith("--")]
    if flags:
        raise ValueError(
            f"{flags[0]} came after the KEY VALUE overrides: flags (--resume, --eval-only) "
            f"come first, e.g. --config-file F --resume SOLVER.EPOCHS 10"
        )
    try:
        if config_file is not None:
            cfg.merge_from_file(config_file)
    except FileNotFoundError as exc:
        missing = (
            f" ({exc.filename!r}, named by _BASE_)"
            if exc.filename and exc.filename != config_file
            else ""
        )
        raise FileNotFoundError(f"config file {config_file!r}: not found{missing}") from exc
    except yaml.YAMLError as exc:
        raise ValueError(
            f"config file {config_file!r} is not valid YAML: {' '.join(str(exc).split())}"
        ) from exc
    except (KeyError, ValueError, TypeError, AssertionError) as exc:
        raise ValueError(f"config file {config_file!r}: {_message(exc, cfg)}") from exc
    if len(opts) % 2:
        raise ValueError(f"command-line overrides must be KEY VALUE pairs, got {list(opts)}")
    try:
        cfg.merge_from_list(list(opts))
    except (KeyError, ValueError, TypeError, AssertionError) as exc:
        raise ValueError(f"command-line override: {_message(exc, cfg)}") from exc


# fvcore's words for a key the config does not have (from a file, from an override).
_UNKNOWN_KEY = re.compile(r"Non-existent (?:config )?key: (\S+)")


def _message(exc, cfg):
    """A merge error's text; for an unknown key, with the config's closest key (a typo's fix)."""
    text = str(exc.args[0] if exc.args else exc)
    unknown = _UNKNOWN_KEY.fullmatch(text)
    # A cutoff that a character missing, added or swapped passes, and a different key does not
    # (SOLVER.MAXITER: SOLVER.MAX_ITER of Detectron2's config 0.97, SOLVER.MAX_TO_KEEP 0.75).
    close = unknown and difflib.get_close_matches(unknown.group(1), _keys(cfg), n=1, cutoff=0.85)
    return f"{text} (did you mean {close[0]}?)" if close else text


def _keys(node, prefix=""):
    """Every leaf key of a config, dotted (``SOLVER.MAX_ITER``)."""
    for name, value in node.items():
        if isinstance(value, dict):
            yield from _keys(value, f"{prefix}{name}.")
        else:
            yield prefix + name


def error_message(exc):
    """The one-line cause of an expected error. An error raised in a data loader worker arrives
    re-raised with the worker's traceback in its message; only its last line is the cause."""
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    if "Original Traceback" in text:
        text = text.rstrip().splitlines()[-1]
        text = text.split(": ", 1)[1] if ": " in text else text
    return text


def stop_on_termination():
    """SIGTERM (kill, scancel, a study that stops) ends the tool as Ctrl-C does: as a
    KeyboardInterrupt naming the signal, which the tools turn into one ``interrupted`` line."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, interrupt)


def interrupted(exc):
    """(exit status, signal name) of an interruption: 128 + the signal's number, as a shell
    reports a process the signal ended. Further signals are ignored from here: the tool is
    already stopping, and a second one would end it with a traceback."""
    name = exc.args[0] if exc.args else "SIGINT"
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    return 128 + signal.Signals[name].value, name
