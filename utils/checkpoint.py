"""A run's output directory, written atomically: the lock, the partial directory, resume checks and
resumable states. What the finished directory holds is utils/saved_model.py's.

A run works in a hidden sibling `.<name>.partial/` (TensorBoard logs, resumable states under
`resume/`), writes the model there at the end and only then renames it to `--model_fn`. A crash
never leaves a half-written model, and an existing model is replaced only by a complete one.

torch is imported only by the functions that need it."""
import atexit
import fcntl
import json
import os
import random
import shutil
import signal
import sys
from pathlib import Path

import numpy as np

from utils.errors import UserError, first_line, on_failure
from utils.saved_model import TRAINING_ARGS

STATE_FILE = "train_state.pt"
RUN_FILE = "run.json"  # in the partial directory: what the interrupted run was, checked by --resume


def partial_dir(model_fn):
    model_fn = Path(model_fn)
    return model_fn.parent / f".{model_fn.name}.partial"


def resume_dir(model_fn):
    return partial_dir(model_fn) / "resume"


def lock_output(model_fn):
    """Hold --model_fn for this run: a second run on it refuses at once. The lock is an flock on
    `.<name>.lock` beside it, which the kernel drops if the run is killed. From here on, a run that
    fails removes what it created, except a resumable state, and says how to resume from that."""
    model_fn = Path(model_fn)
    created = _make_parents(model_fn.parent)
    path = model_fn.parent / f".{model_fn.name}.lock"
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            _remove_empty(created)
            raise UserError(f"--model_fn {model_fn}: cannot write in {model_fn.parent} ({error.strerror}): "
                            "choose a directory you can write to") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UserError(f"--model_fn {model_fn}: another run is writing this model now (it holds {path}): "
                            "wait for it to finish, or choose another --model_fn") from None
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break  # still the file on disk, not one a finishing run just removed
        except FileNotFoundError:
            pass
        os.close(fd)

    partial_was_there = partial_dir(model_fn).exists()  # an earlier run's: not this run's to remove

    def release():
        path.unlink(missing_ok=True)  # before closing: nobody can lock the file we remove
        os.close(fd)
        _remove_empty(created)

    def clean_up_failed_run():
        """The partial directory goes, unless it holds a resumable state: then it stays, and the
        note says so."""
        partial = partial_dir(model_fn)
        if partial.is_dir() and train_states(resume_dir(model_fn)):
            return f"the resumable state in {resume_dir(model_fn)} is kept: continue with --resume"
        if not partial_was_there:
            shutil.rmtree(partial, ignore_errors=True)
        return None

    atexit.register(release)
    on_failure(clean_up_failed_run)


def _make_parents(directory):
    """Create missing parent directories; returns the ones created, deepest first."""
    missing = []
    for parent in [directory, *directory.parents]:
        if parent.is_dir():
            break
        if parent.exists():
            raise UserError(f"--model_fn: {parent} is a file, not a directory: choose another --model_fn")
        missing.append(parent)
    try:
        for parent in reversed(missing):
            parent.mkdir()
    except OSError as error:
        _remove_empty(missing)
        raise UserError(f"--model_fn: cannot create {error.filename} ({error.strerror}): "
                        "choose a directory you can write to") from None
    return missing


def _remove_empty(directories):
    for directory in directories:
        try:
            directory.rmdir()
        except OSError:
            break


def check_output(model_fn, resume):
    """Refuse, before anything is written, to clobber what is not ours or to drop an unfinished run."""
    model_fn, partial = Path(model_fn), partial_dir(model_fn)
    old = model_fn.parent / f".{model_fn.name}.old"
    if old.is_dir() and not model_fn.exists():  # a crash between commit_run's two renames
        os.replace(old, model_fn)
        print(f"warning: restored {model_fn} from {old} (an earlier run stopped while replacing it)", file=sys.stderr)
    if model_fn.exists() and not (model_fn / TRAINING_ARGS).exists() and (
            not model_fn.is_dir() or any(model_fn.iterdir())):
        raise UserError(f"{model_fn}: exists and is not a model written by this tool; "
                        "refusing to replace it: choose another --model_fn")
    if resume and not (partial / "resume").is_dir():
        raise UserError(f"--resume: no interrupted run of {model_fn} to continue (no {partial}/resume)")
    if not resume and partial.exists():
        raise UserError(f"{partial}: an interrupted run of {model_fn} is there: "
                        f"add --resume to continue it, or delete that directory to start afresh")


def start_run(model_fn, fingerprint):
    """The partial directory, with the fingerprint a later --resume is checked against."""
    partial = partial_dir(model_fn)
    partial.mkdir(parents=True, exist_ok=True)
    if not (partial / RUN_FILE).exists():
        (partial / RUN_FILE).write_text(json.dumps(fingerprint, indent=2, ensure_ascii=False) + "\n")
    return partial


def run_fingerprint(args, trainer, labels, world_size, data, ignore=("model_fn", "resume", "save_every",
                                                                      "save_total_limit", "n_errors", "log_dir",
                                                                      "test_fn", "device", "cache_dir",
                                                                      "preprocessing_num_workers")):
    """What a resumed run must share with the interrupted one: the flags that shape training, the
    data (`data`: the training and validation sources by content, not name), the labels, the trainer
    and the process count."""
    flags = {key: value for key, value in vars(args).items() if key not in ignore}
    return {"trainer": trainer, "flags": flags, "data": data, "labels": labels, "world_size": world_size}


def check_resume_matches(model_fn, fingerprint):
    """--resume continues only the same run: otherwise the restored state does not fit (labels) or
    silently mixes two runs (data, batch size)."""
    path = partial_dir(model_fn) / RUN_FILE
    try:
        before = json.loads(path.read_text())
    except (OSError, ValueError):
        return  # a run interrupted before this check existed
    if before.get("trainer") != fingerprint["trainer"]:
        raise UserError(f"--resume: the interrupted run of {model_fn} was started by "
                        f"finetune_plm_{before.get('trainer')}.py: resume it with that script")
    changed = [f"--{key} ({before['flags'].get(key)!r} then, {value!r} now)"
               for key, value in fingerprint["flags"].items() if before.get("flags", {}).get(key) != value]
    changed += [f"the contents of --{key}" for key, digest in fingerprint["data"].items()
                if before.get("data", {}).get(key) != digest]
    if before.get("labels") != fingerprint["labels"]:
        changed.append("the labels")
    if before.get("world_size") != fingerprint["world_size"]:
        changed.append(f"the number of processes ({before.get('world_size')} then, {fingerprint['world_size']} now)")
    if changed:
        raise UserError(f"--resume: this run differs from the interrupted one in {', '.join(changed)}: rerun with "
                        f"the same flags and data, or delete {partial_dir(model_fn)} to start afresh")


def commit_run(model_fn):
    """Move the finished partial directory into place; the old model goes only once the new one is
    there. Ctrl-C and SIGTERM wait until this is done, so they cannot split it."""
    model_fn, partial = Path(model_fn), partial_dir(model_fn)
    signals = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        shutil.rmtree(partial / "resume", ignore_errors=True)
        (partial / RUN_FILE).unlink(missing_ok=True)
        if model_fn.exists():
            old = model_fn.parent / f".{model_fn.name}.old"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(model_fn, old)
            os.replace(partial, model_fn)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(partial, model_fn)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, signals)


def save_train_state(directory, step, state, keep):
    """A resumable state `checkpoint-<step>/train_state.pt`; keep only the newest `keep`."""
    import torch
    directory = Path(directory)
    target = directory / f"checkpoint-{step}"
    tmp = directory / f".checkpoint-{step}.tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    torch.save(state, tmp / STATE_FILE)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)  # a state is either complete or absent, even after SIGKILL
    for old in train_states(directory)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def train_states(directory):
    """Complete resumable states, oldest first. A state is complete once its last file is written
    (train_state.pt here; trainer_state.json, which Trainer writes last); a SIGKILL mid-save leaves
    an incomplete one, which is skipped."""
    states = [p for p in Path(directory).glob("checkpoint-*") if (p / STATE_FILE).exists()
              or (p / "trainer_state.json").exists()]
    return sorted(states, key=lambda p: int(p.name.split("-")[1]))


def latest_train_state(directory):
    """The newest saved state whose files all load (Trainer resumes from its path)."""
    return _newest_readable(directory, _check_trainer_state)[0]


def load_train_state(directory):
    """The native trainer's newest readable state, loaded."""
    return _newest_readable(directory, lambda state: _torch_load(state / STATE_FILE))[1]


def _newest_readable(directory, read):
    """(path, read(path)) of the newest state that reads; an unreadable one (a disk that filled up, a
    file cut short) is passed over with a warning for the one before it."""
    for state in reversed(train_states(directory)):
        try:
            loaded = read(state)
        except Exception as error:  # torch, safetensors and json each raise their own kinds
            print(f"warning: {state} cannot be read ({first_line(error)}); trying the state before it",
                  file=sys.stderr)
            continue
        print(f"resuming from {state}", file=sys.stderr)
        return state, loaded
    raise UserError(f"--resume: no complete, readable saved state in {directory}; delete {Path(directory).parent} "
                    "to start afresh")


def _check_trainer_state(state):
    if (state / STATE_FILE).exists():
        return _torch_load(state / STATE_FILE)
    json.loads((state / "trainer_state.json").read_text())  # Trainer's: progress, weights, optimizer, schedule
    from safetensors import safe_open
    for weights in state.glob("*.safetensors"):
        with safe_open(str(weights), "pt") as f:
            for key in f.keys():
                f.get_tensor(key)
    for name in ("optimizer.pt", "scheduler.pt"):
        if (state / name).exists():
            _torch_load(state / name)
    return None


def _torch_load(path):
    import torch
    return torch.load(path, map_location="cpu", weights_only=True)


def snapshot(progress, model, optimizer, scheduler, scaler):
    """Everything needed to continue exactly here: weights, optimizer, schedule, scaler, RNGs, progress."""
    import torch
    numpy_state = np.random.get_state()
    return {
        "progress": progress,
        "model": getattr(model, "module", model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "rng": {"python": random.getstate(), "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "numpy": [numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]]},
    }


def restore(state, model, optimizer, scheduler, scaler):
    """Put a snapshot() back into place; returns its progress."""
    import torch
    getattr(model, "module", model).load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    rng = state["rng"]
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in rng["python"]))
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    np.random.set_state((rng["numpy"][0], np.array(rng["numpy"][1], dtype=np.uint32), *rng["numpy"][2:]))
    return state["progress"]
