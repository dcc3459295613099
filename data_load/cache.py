"""Where parsed and tokenized data is kept between runs, and how a cache entry is built exactly once.

An entry is a directory named by a key: a hash of everything its content depends on (the data by
content, the reading flags, the tokenizer, max_length). It is built in a temporary directory and
renamed into place when complete, so a killed run never leaves half an entry; an flock on the key
makes concurrent runs (torchrun's processes, two runs on one file) build it once and share it.
An entry's meta.json records a checksum of each of its files, checked when the entry is opened: a
damaged entry (a disk error, a file overwritten or cut short) is rebuilt with a warning instead of
failing every run that reads it."""
import contextlib
import hashlib
import json
import shutil
from pathlib import Path

from utils.errors import UserError
from utils.files import atomic_directory, file_checksum
from utils.log import log
from utils.processes import close_lock, open_lock

CACHE_FORMAT = 3  # bump when what an entry holds changes; old entries are then ignored


def cache_root(cache_dir=None):
    if cache_dir:
        return Path(cache_dir).resolve()  # absolute: worker processes run from the repository's directory
    import datasets
    return Path(datasets.config.HF_DATASETS_CACHE) / "finetune_plm"


def content_key(*parts):
    """A short hex key for a list of JSON-able parts."""
    blob = json.dumps([CACHE_FORMAT, *parts], sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


@contextlib.contextmanager
def build_lock(root, key):
    """Hold the key's lock while checking for and building its entry: other processes wait, then
    find the entry built. A complete entry in a cache this process cannot write (read-only, shared)
    is read without the lock: nobody can be changing it."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd = open_lock(root / f".{key}.lock")
    except OSError as error:
        if read_meta(root / key, quiet=True) is not None:
            yield
            return
        raise UserError(f"cannot write the data cache in {root} ({error.strerror}): choose a writable "
                        "directory with --cache_dir") from None
    try:
        yield
    finally:
        close_lock(fd)  # releases the flock; the lock file stays (removing it would race with a waiter)


def build_entry(directory, build):
    """Run `build(tmp)` into a temporary sibling directory, then rename it to `directory`."""
    for stale in directory.parent.glob(f".{directory.name}.tmp-*"):  # left by a killed run (we hold the lock)
        shutil.rmtree(stale, ignore_errors=True)
    with atomic_directory(directory, per_process=True) as tmp:
        build(tmp)


def read_meta(directory, quiet=False, verify=True):
    """The entry's meta.json, or None when the entry must be built: absent, left unfinished, or damaged
    (a file whose checksum is not the one written; checking costs about 25 ms per 100 MB,
    utils.files.file_checksum). verify=False: just built by this process, not checked again."""
    try:
        meta = json.loads((directory / "meta.json").read_text())
        checksums = meta.get("checksums", {})
        damaged = next((name for name, digest in checksums.items()
                        if verify and file_checksum(directory / name) != digest), None)
    except (OSError, ValueError, AttributeError):
        return None
    if damaged is None and checksums:
        return meta
    if not quiet:
        log.warning(f"the cache entry {directory} is damaged ({damaged or 'no checksums'} is not what "
                    "was written): rebuilding it")
    return None


def write_meta(directory, meta):
    """meta.json, with the checksum of every other file of the entry; written last, it marks the entry complete."""
    checksums = {path.name: file_checksum(path) for path in sorted(directory.iterdir())
                 if path.is_file() and path.name != "meta.json"}
    (directory / "meta.json").write_text(json.dumps({**meta, "checksums": checksums}, indent=1,
                                                    ensure_ascii=False) + "\n")


def note(message):
    log.info(message)
