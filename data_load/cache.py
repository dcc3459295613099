"""Where parsed and tokenized data is kept between runs, and how a cache entry is built exactly once.

An entry is a directory named by a key: a hash of everything its content depends on (the data by
content, the reading flags, the tokenizer, max_length). It is built in a temporary directory and
renamed into place when complete, so a killed run never leaves half an entry; an flock on the key
makes concurrent runs (torchrun's processes, two runs on one file) build it once and share it."""
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
from pathlib import Path

from utils.errors import UserError
from utils.log import log

CACHE_FORMAT = 2  # bump when what an entry holds changes; old entries are then ignored


def cache_root(cache_dir=None):
    if cache_dir:
        return Path(cache_dir)
    import datasets
    return Path(datasets.config.HF_DATASETS_CACHE) / "finetune_plm"


def content_key(*parts):
    """A short hex key for a list of JSON-able parts."""
    blob = json.dumps([CACHE_FORMAT, *parts], sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def file_digest(path):
    """The file's content hash (blake2b: ~1 GB/s, so a 1 GB file costs about a second per run)."""
    digest = hashlib.blake2b(digest_size=20)
    with open(path, "rb") as f:
        while block := f.read(1 << 23):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def build_lock(root, key):
    """Hold the key's lock while checking for and building its entry: other processes wait, then
    find the entry built."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd = os.open(root / f".{key}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise UserError(f"cannot write the data cache in {root} ({error.strerror}): choose a writable "
                        "directory with --cache_dir") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the flock; the lock file stays (removing it would race with a waiter)


def build_entry(directory, build):
    """Run `build(tmp)` into a temporary sibling directory, then rename it to `directory`."""
    for stale in directory.parent.glob(f".{directory.name}.tmp-*"):  # left by a killed run (we hold the lock)
        shutil.rmtree(stale, ignore_errors=True)
    tmp = directory.parent / f".{directory.name}.tmp-{os.getpid()}"
    tmp.mkdir(parents=True)
    try:
        build(tmp)
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_meta(directory):
    try:
        return json.loads((directory / "meta.json").read_text())
    except (OSError, ValueError):
        return None  # absent or left unfinished: rebuilt


def write_meta(directory, meta):
    (directory / "meta.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n")


def note(message):
    log.info(message)
