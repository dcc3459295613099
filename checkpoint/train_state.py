"""Resumable training states: `checkpoint-<step>/` directories under a run's `resume/`, written
whole or not at all, the newest readable one found again after a crash, and the snapshot of
everything a run needs to continue exactly where it stopped (weights, optimizer, schedule, scaler,
random number generators, progress).

torch is imported only by the functions that need it."""
import json
import random
import shutil
from pathlib import Path

import numpy as np

from utils.errors import UserError, first_line
from utils.files import atomic_directory
from utils.log import log

STATE_FILE = "train_state.pt"


def save_train_state(directory, step, state, keep):
    """A resumable state `checkpoint-<step>/train_state.pt`; keep only the newest `keep`."""
    import torch
    directory = Path(directory)
    with atomic_directory(directory / f"checkpoint-{step}") as tmp:  # complete or absent, even after SIGKILL
        torch.save(state, tmp / STATE_FILE)
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
            log.warning(f"{state} cannot be read ({first_line(error)}); trying the state before it")
            continue
        log.info(f"resuming from {state}")
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
