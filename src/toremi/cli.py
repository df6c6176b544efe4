"""The ``toremi`` command: one subcommand per pipeline stage.

Each stage lives in its own module exposing ``main(argv) -> int``; this file only dispatches, so a
stage's options are documented where the stage is implemented (``toremi <stage> --help``).
"""

from __future__ import annotations

import errno as errno_mod
import importlib
import os
import re
import signal
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

STAGES = {
    "corpus": ("toremi.corpus.cli", "build the multi-domain corpus or ingest your own"),
    "annotate": ("toremi.annotate.cli", "embed, cluster, extract keywords and label topics"),
    "prepare": ("toremi.prepare.driver", "tokenize documents into memory-mapped token shards"),
    "train": ("toremi.train.cli", "pre-train a GPT-2 with a data-mixing method"),
    "eval": ("toremi.evaluate.cli", "per-domain perplexity and downstream accuracy"),
    "experiment": ("toremi.experiment", "grid of methods x seeds, evaluated and tabulated"),
    "remap": ("toremi.remap", "carry per-topic weights of a run over to a new topic set"),
    "transfer": ("toremi.transfer", "does a method ranking at one model scale hold at another?"),
    "noise": ("toremi.noise", "corrupt one topic of the training data (noise experiment)"),
    "report": ("toremi.report.cli", "HTML report and PNG plots from runs and evaluations"),
    "demo": ("toremi.demo", "the whole pipeline on a small slice of the shipped corpus"),
}


# Exit codes (README "Exit codes"): scripts can tell a finished stage from a partial one.
EXIT_OK = 0            # finished
EXIT_FAILED = 1        # an unexpected error (a bug): the traceback is printed
EXIT_USAGE = 2         # bad input or invocation, refused with a one-line message
EXIT_DIVERGED = 3      # train stopped on persistent non-finite loss (checkpoint written)
EXIT_OS_ERROR = 74     # the OS refused a read/write (disk full, file too large, permission)
EXIT_INTERRUPTED = 75  # interrupted by SIGTERM/SIGINT or stop_at_step; progress kept, rerun resumes
EXIT_BROKEN_PIPE = 141  # stdout closed early (`toremi ... | head`): 128 + SIGPIPE, as a shell reports it


class Interrupted(Exception):
    """SIGTERM turned into an exception in stages without their own signal handling."""


def os_error_line(exc: OSError) -> str:
    """``FILE: ENAME (strerror)`` from any OSError, pyarrow's included (errno only in the text)."""
    code = exc.errno
    if code is None:
        m = re.search(r"errno (\d+)", str(exc), re.I)
        code = int(m.group(1)) if m else None
    target = exc.filename or getattr(exc, "toremi_path", None)
    if not code:
        return f"{target}: {exc}" if target else str(exc)
    name = errno_mod.errorcode.get(code, f"errno {code}")
    return f"{target or '?'}: {name} ({os.strerror(code)})"


def usage() -> str:
    lines = ["usage: toremi <stage> [options] [key.sub=value ...]", "", "stages:"]
    lines += [f"  {name:<11} {help_}" for name, (_, help_) in STAGES.items()]
    lines += ["", "Run `toremi <stage> --help` for a stage's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Dispatch to a stage; a reader that closes stdout early (``| head``) ends it quietly."""
    try:
        try:
            rc = _dispatch(argv)
        except SystemExit as exc:  # argparse's --help or usage error: flushed below like any output
            if not isinstance(exc.code, (int, type(None))):
                raise
            rc = exc.code or 0
        sys.stdout.flush()  # inside the try: a failed flush at interpreter exit would print a warning
        return rc
    except BrokenPipeError:
        quiet_stdout()
        return EXIT_BROKEN_PIPE


def quiet_stdout() -> None:
    """Point stdout at /dev/null so the flush at interpreter exit cannot raise again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no real stdout (captured): nothing left to flush
        pass


def _dispatch(argv: list[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] == "--version":
        from toremi import __version__

        print(__version__)
        return 0
    stage, rest = argv[0], argv[1:]
    if stage not in STAGES:
        print(f"toremi: unknown stage {stage!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module_name = STAGES[stage][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("toremi"):
            print(f"toremi {stage}: not yet available in this version ({module_name} missing)",
                  file=sys.stderr)
            return 2
        raise
    from toremi.config import ConfigError

    def on_term(signum, _frame):
        raise Interrupted(signal.Signals(signum).name)

    if stage != "train":  # train checkpoints on SIGTERM itself
        try:
            signal.signal(signal.SIGTERM, on_term)
        except ValueError:  # not the main thread
            pass
    debug = bool(os.environ.get("TOREMI_DEBUG"))
    try:
        return int(module.main(rest) or 0)
    except ConfigError as exc:
        print(f"toremi {stage}: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        if debug:
            raise
        print(f"toremi {stage}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # stdout closed early: main() ends quietly
        raise
    except OSError as exc:
        if debug:
            raise
        print(f"toremi {stage}: error: {os_error_line(exc)}", file=sys.stderr)
        return EXIT_OS_ERROR
    except (KeyboardInterrupt, Interrupted):
        print(f"toremi {stage}: interrupted; completed shards are kept, rerun to resume",
              file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
