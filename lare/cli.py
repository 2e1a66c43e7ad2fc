"""The jobs' command-line contract: a user error is one clear line on stderr and exit status 2; a bug keeps its
traceback (and Python's exit status 1).

    from lare.cli import UserError, add_debug_flag, main_guard, run_cli

    @main_guard
    def main(argv=None): ...

    if __name__ == "__main__":
        run_cli(main)

A user error says the *input* is wrong: a path that does not exist, an unknown option or config key, a non-empty
output folder, an unreachable tracking server. Code that finds one raises UserError, or maps a library's own
exception to it where the value came from the user; the config's ConfigError counts as one too (every value it
names came from a config file or an override). So does SystemExit with a message: the older way this project
reported such errors (lare.train.launch). Every other exception is a bug or a failure of the environment and is
left alone, traceback included: turning those into tidy messages would hide what needs fixing.

`--debug` on the command line (or LARE_DEBUG=1) prints the traceback of user errors too.

Every job starts the same way (`start`, then `with ray_for(...)`): environment defaults, logging (Ray's own log lines
quiet unless --verbose: the jobs draw their own progress, lare.progress), Ray on 127.0.0.1 or $RAY_ADDRESS, stopped
at the end when the job started it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
import traceback
from typing import Callable, NoReturn

from lare.config import ConfigError

EXIT_USER_ERROR = 2  # what argparse uses for a bad command line: all user errors read the same to a script


class UserError(Exception):
    """The user's input is wrong; the message names the bad value and, where it can, what to do instead."""


class UserExit(SystemExit):
    """How a guarded main stops on a user error (the message is already on stderr): exit status 2, and str() is
    the message, so a caller that runs main() in-process still sees what went wrong."""

    def __init__(self, message: str):
        super().__init__(EXIT_USER_ERROR)
        self.message = message

    def __str__(self) -> str:
        return self.message


def debug_enabled(argv: list[str] | None = None) -> bool:
    """--debug among the arguments (looked up directly: the error may come before or from argparse), or LARE_DEBUG."""
    args = sys.argv[1:] if argv is None else argv
    return "--debug" in args or os.environ.get("LARE_DEBUG", "").strip().lower() in ("1", "true", "yes")


def add_debug_flag(parser) -> None:
    parser.add_argument("--debug", action="store_true",
                        help="on a user error, print the traceback too (same as LARE_DEBUG=1); exit status stays 2")


def add_job_flags(parser) -> None:
    """The flags every job has: --debug and --verbose."""
    add_debug_flag(parser)
    parser.add_argument("--verbose", action="store_true",
                        help="show Ray's own log lines (its workers' output, Ray Data and Ray Train progress) here too")


# Every job's environment, set before it starts Ray (its workers inherit it); a value the user set is kept.
JOB_ENVIRONMENT = {
    "TOKENIZERS_PARALLELISM": "false",  # the tokenizers' thread pool warns, then disables itself, in every forked worker
    "TUNE_DISABLE_STRICT_METRIC_CHECKING": "1",  # validation metrics exist only at stage ends
}
# Loggers of Ray's that speak on the driver itself (not through its log forwarding).
RAY_LOGGERS = ("ray", "ray.data", "ray.train", "ray.tune")


def start(verbose: bool = False, data_progress: bool = False) -> None:
    """A job's first step: environment defaults and logging (INFO for the project, WARNING for Ray unless verbose).
    data_progress: keep Ray Data's own bars (the progress of a data build); other jobs draw their own."""
    for key, value in JOB_ENVIRONMENT.items():
        os.environ.setdefault(key, value)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for name in RAY_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)
    if not (verbose or data_progress):
        os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")


@contextlib.contextmanager
def ray_for(num_cpus: int | None = None, verbose: bool = False, **init_kwargs):
    """Ray for the duration of a job (lare.rayenv.ensure_ray: the one already up, $RAY_ADDRESS, else a local Ray on
    127.0.0.1), disconnected at the end when the job started it; its workers' output stays in Ray's log files unless
    verbose."""
    import ray

    from lare.rayenv import ensure_ray

    started_here = not ray.is_initialized()
    ensure_ray(num_cpus=num_cpus, **{"log_to_driver": verbose, **init_kwargs})
    try:
        yield
    finally:
        if started_here:
            ray.shutdown()


def user_message(error: BaseException) -> str | None:
    """The message to show when `error` is a user error, else None (a bug: let it propagate)."""
    if isinstance(error, UserExit):  # already reported by an inner guard
        return None
    if isinstance(error, (UserError, ConfigError)):
        return str(error)
    if isinstance(error, SystemExit) and isinstance(error.code, str):
        return error.code.removeprefix("error: ")
    return None


def main_guard(main: Callable) -> Callable:
    """Wrap a job's main(argv): user errors become `error: <message>` on stderr and UserExit (status 2)."""

    @functools.wraps(main)
    def guarded(argv: list[str] | None = None, **kwargs):
        try:
            return main(argv, **kwargs)
        except (UserError, ConfigError, SystemExit) as error:
            message = user_message(error)
            if message is None:
                raise
            if debug_enabled(argv):
                traceback.print_exception(error)
            print(f"error: {message}", file=sys.stderr, flush=True)
            raise UserExit(message) from None

    return guarded


def run_cli(main: Callable, argv: list[str] | None = None) -> NoReturn:
    """What a job's `if __name__ == "__main__"` calls: main's int result is the exit status, anything else is 0."""
    result = main_guard(main)(argv)
    sys.exit(result if isinstance(result, int) and not isinstance(result, bool) else 0)
