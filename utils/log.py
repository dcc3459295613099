"""The one logger every command writes its messages through, set up once (utils.errors.exit_on_user_error
calls setup_logging before a command runs). Results a command prints for a pipe (labels, scores, the
export's report) go to stdout as before; everything else goes through here.

What users see stays as it was: `warning: ...` for warnings, `error: ...` for errors, other lines as
written (`note: ...`, the run plan, `saved ...`). Lines go to stderr above any progress bar. Under
torchrun / accelerate launch only the main process (rank 0) logs below errors, so a data warning
prints once, not once per process.

Imports nothing heavy: the torch-free ONNX classifier logs through it too."""
import logging
import sys

log = logging.getLogger("finetune_plm")
PREFIXES = {logging.WARNING: "warning: ", logging.ERROR: "error: ", logging.CRITICAL: "error: "}


class _UserLines(logging.Formatter):
    def format(self, record):
        prefix = getattr(record, "prefix", PREFIXES.get(record.levelno, ""))  # extra={"prefix": ...} overrides
        return prefix + record.getMessage()


class _AboveProgressBars(logging.Handler):
    """stderr, through tqdm.write where tqdm is installed, so a line never lands inside a progress bar."""

    def emit(self, record):
        try:
            message = self.format(record)
            tqdm = sys.modules.get("tqdm")  # no tqdm imported (the torch-free classifier): no progress bar to avoid
            if tqdm is None:
                sys.stderr.write(message + "\n")
            else:
                tqdm.tqdm.write(message, file=sys.stderr)
            sys.stderr.flush()
        except Exception:  # logging's own contract: a failed write never raises into the caller
            self.handleError(record)


def route(name, level):
    """Send another library's logger (uvicorn's, for the server) through the same handler and format."""
    other = logging.getLogger(name)
    other.handlers = [_handler]
    other.setLevel(level)
    other.propagate = False


def setup_logging(rank=0):
    """Main process: INFO and above; the other processes of a distributed run: errors only."""
    log.setLevel(logging.INFO if rank == 0 else logging.ERROR)
    return log


# The handler is there from import on, so a message logged before setup_logging (or by code a test
# calls directly) has its usual form too.
_handler = _AboveProgressBars()
_handler.setFormatter(_UserLines())
log.addHandler(_handler)
log.setLevel(logging.INFO)
log.propagate = False
