"""User-facing errors: one line on stderr, exit code 2, no traceback; and what a failed run undoes."""
import atexit
import contextlib
import signal
import sys

from utils.log import log, setup_logging


class UserError(Exception):
    """Something the user can fix (bad file, bad flag). The message says what and how."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill`, a scheduler's time limit): stops the program as Ctrl-C does, with its own exit code."""


_terminated = []  # the SIGTERMs received


def _terminate(signum, frame):
    _terminated.append(signum)
    raise Terminated


def check_terminated():
    """Raise Terminated if a SIGTERM came whose exception was lost: Python ignores an exception raised inside a
    garbage-collection callback, and a search whose SIGTERM landed in one of SQLAlchemy's ran on to its end
    (tests/test_hp_search.py, a fresh-clone CI run). Called where a lost stop would let work go on."""
    if _terminated:
        raise Terminated


def require(modules, needed_for, install):
    """Check optional packages before any work starts: one line naming what is missing and how to
    install it, instead of an ImportError traceback halfway through."""
    import importlib.util
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        raise UserError(f"{needed_for} needs {', '.join(missing)}, which is not installed: {install}")


def located(path, line, message):
    """`file:line: message`, the form editors and terminals make clickable."""
    return UserError(f"{path}:{line}: {message}" if line else f"{path}: {message}")


def first_line(error):
    """The first line of an exception's message (library errors can run to pages), or its type."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


_failure_cleanups = []
_exit_hooks = []


def on_failure(cleanup):
    """Register `cleanup()` to run when the program ends on an error or an interrupt; it may return a
    note (e.g. where a resumable state was kept) for the error line."""
    _failure_cleanups.append(cleanup)


def exit_on_user_error(main):
    """Run `main()`. A UserError, an OS error (disk full, permission denied: the environment, not a
    bug), Ctrl-C or SIGTERM ends in one line on stderr, after the registered clean-ups: exit code 2,
    or 130 for Ctrl-C and 143 for SIGTERM. Any other exception is a bug: its traceback is shown, but
    the clean-ups run first, so that not even a bug leaves a state that a rerun refuses."""
    try:
        setup_logging(rank=0)  # a trainer lowers it on the other processes (training.prepare)
        signal.signal(signal.SIGTERM, _terminate)  # a trainer's loop replaces it with a graceful stop (utils.runtime)
        try:
            return main()
        except BrokenPipeError:  # the reader went away (`... | head`): the caller decides, it is no error
            raise
        except UserError as error:
            message, prefix, code = str(error), "error: ", 2
        except OSError as error:
            where = f"{error.filename}: " if error.filename else ""
            message, prefix, code = f"{where}{error.strerror or first_line(error)}", "error: ", 2
        except Terminated:
            message, prefix, code = "stopped by SIGTERM", "interrupted: ", 143
        except KeyboardInterrupt:
            message, prefix, code = "stopped at once", "interrupted: ", 130
        except SystemExit as exit:
            if exit.code not in (0, None):
                run_clean_ups()
            raise
        except BaseException:
            run_clean_ups()
            raise
        notes = run_clean_ups()
        log.error("; ".join([message, *notes]), extra={"prefix": prefix})
        sys.exit(code)
    finally:
        run_exit_hooks()  # what the command held while it ran (a lock), let go as its process would


def run_clean_ups():
    """Run the registered clean-ups once (the program is ending); their notes. A second Ctrl-C or SIGTERM
    waits until they are done, rather than leaving them half done."""
    notes = []
    with interrupts_deferred():
        while _failure_cleanups:
            try:
                note = _failure_cleanups.pop(0)()
            except Exception as error:  # one clean-up failing must not keep the others from running
                note = f"clean-up failed: {first_line(error)}"
            if note:
                notes.append(note)
    return notes


@contextlib.contextmanager
def interrupts_deferred():
    """Ctrl-C and SIGTERM wait until the block is done (they are delivered after it), so that they
    cannot split what must happen whole: the clean-ups, a finished model moving into place."""
    signals = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, signals)


def at_exit(hook):
    """Register `hook()` to run when the command ends, however it ends (after a failure's clean-ups): for
    what a process holds only while it runs, such as a lock. exit_on_user_error runs them as main returns,
    so that a command called in process (the tests) lets go of them as its own process would; a caller
    without it gets them at interpreter exit."""
    _exit_hooks.append(hook)


def run_exit_hooks():
    while _exit_hooks:
        hook = _exit_hooks.pop()
        try:
            hook()
        except Exception:  # one hook failing must not keep the others from running
            pass


atexit.register(run_exit_hooks)
