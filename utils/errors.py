"""User-facing errors: one line on stderr, exit code 2, no traceback; and what a failed run undoes."""
import sys

from utils.log import log, setup_logging


class UserError(Exception):
    """Something the user can fix (bad file, bad flag). The message says what and how."""


def located(path, line, message):
    """`file:line: message`, the form editors and terminals make clickable."""
    return UserError(f"{path}:{line}: {message}" if line else f"{path}: {message}")


def first_line(error):
    """The first line of an exception's message (library errors can run to pages), or its type."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


_failure_cleanups = []


def on_failure(cleanup):
    """Register `cleanup()` to run when the program ends on an error or an interrupt; it may return a
    note (e.g. where a resumable state was kept) for the error line."""
    _failure_cleanups.append(cleanup)


def exit_on_user_error(main):
    """Run `main()`. A UserError, an OS error (disk full, permission denied: the environment, not a
    bug) or Ctrl-C ends in one line on stderr, after the registered clean-ups: exit code 2, or 130 for
    an interrupt."""
    setup_logging(rank=0)  # a trainer lowers it on the other processes (training.prepare)
    try:
        return main()
    except BrokenPipeError:  # the reader went away (`... | head`): the caller decides, it is no error
        raise
    except UserError as error:
        message, prefix, code = str(error), "error: ", 2
    except OSError as error:
        where = f"{error.filename}: " if error.filename else ""
        message, prefix, code = f"{where}{error.strerror or first_line(error)}", "error: ", 2
    except KeyboardInterrupt:
        message, prefix, code = "stopped at once", "interrupted: ", 130
    notes = [note for note in (cleanup() for cleanup in _failure_cleanups) if note]
    log.error("; ".join([message, *notes]), extra={"prefix": prefix})
    sys.exit(code)
