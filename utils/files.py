"""What a file's content is, as a short string: identity (a hash) for cache keys, --resume and the
weights an ONNX export came from; a checksum for catching damage to a file we wrote. And the one way a
file or a directory is written whole or not at all (atomic_write, atomic_directory)."""
import contextlib
import hashlib
import os
import shutil
import zlib
from pathlib import Path

from utils.errors import interrupts_deferred

BLOCK = 1 << 23


def file_digest(path):
    """The file's SHA-256 (1.7 GB/s here with the CPU's SHA instructions, against 0.9 GB/s for blake2b:
    a 1 GB training file costs about 0.6 s a run)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(BLOCK):
            digest.update(block)
    return digest.hexdigest()[:40]


def file_checksum(path):
    """Size and CRC-32 (4 GB/s here): enough to catch a disk error or a file overwritten or cut short, at a
    quarter of a hash's cost, for files read at every run (cache entries)."""
    crc = 0
    size = 0
    with open(path, "rb") as f:
        while block := f.read(BLOCK):
            crc = zlib.crc32(block, crc)
            size += len(block)
    return f"{size}:{crc:08x}"


def _temporary(path, per_process, kind="tmp"):
    """The hidden sibling `.NAME.tmp` (or `.NAME.tmp-PID` where several processes may write NAME at once):
    in the same directory, so that the rename into place stays on one filesystem and is atomic."""
    return path.with_name(f".{path.name}.{kind}" + (f"-{os.getpid()}" if per_process else ""))


@contextlib.contextmanager
def atomic_write(path, mode=None, per_process=False, **open_args):
    """Write the file `path` whole or not at all: the block writes a temporary sibling, which replaces
    `path` (os.replace) when the block ends, and is removed when it fails. Yields the temporary's Path,
    or, given a mode ("w", "wb"), the file opened on it (closed before the rename). A SIGKILL leaves the
    temporary at most, never half a `path`; with a fixed name (not per_process) the next writer reuses it."""
    path = Path(path)
    temporary = _temporary(path, per_process)
    try:
        if mode is None:
            yield temporary
        else:
            with open(temporary, mode, **open_args) as f:
                yield f
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_directory(path, per_process=False):
    """Write the directory `path` whole or not at all: the block fills a temporary sibling directory
    (yielded), which then takes `path`'s place; what was there before goes only once the new one is in
    (moved aside, then removed: os.replace cannot replace a non-empty directory). When the block fails,
    the temporary goes. A model directory moving into place is checkpoint.run_dir's (commit_run)."""
    path = Path(path)
    temporary = _temporary(path, per_process)
    shutil.rmtree(temporary, ignore_errors=True)  # a killed writer's (a fixed name has one writer at a time)
    temporary.mkdir(parents=True)
    try:
        yield temporary
        if not os.path.lexists(path):
            os.replace(temporary, path)
            return
        old = _temporary(path, True, "old")
        with interrupts_deferred():  # Ctrl-C or SIGTERM between the two renames would leave nothing at `path`
            os.replace(path, old)
            try:
                os.replace(temporary, path)
            except OSError:
                os.replace(old, path)
                raise
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
