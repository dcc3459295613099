"""The one checkpoint format both trainers write and the classifier reads, written atomically.

A run works in a hidden sibling `.<name>.partial/` (TensorBoard logs, resumable states under
`resume/`), writes the model there at the end and only then renames it to `--model_fn`. A crash
never leaves a half-written model, and an existing model is replaced only by a complete one.

Checkpoint layout (a `save_pretrained` directory, loadable by `transformers.pipeline`):
  config.json (real id2label/label2id), model.safetensors, tokenizer files,
  training_args.json, metrics.json, history.json, learning_curve.png, confusion_matrix.png,
  errors.tsv, runs/ (TensorBoard); after export_plm.py also model.onnx and model.int8.onnx.

torch is imported only by the functions that need it: the ONNX classifier reads checkpoints without it."""
import json
import os
import random
import shutil
import sys
from pathlib import Path

import numpy as np

from utils.errors import UserError, first_line

TRAINING_ARGS = "training_args.json"
STATE_FILE = "train_state.pt"


def partial_dir(model_fn):
    model_fn = Path(model_fn)
    return model_fn.parent / f".{model_fn.name}.partial"


def resume_dir(model_fn):
    return partial_dir(model_fn) / "resume"


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


def start_run(model_fn):
    partial = partial_dir(model_fn)
    partial.mkdir(parents=True, exist_ok=True)
    return partial


def save_model(directory, model, tokenizer, training_args):
    """Weights as safetensors, config with label names, tokenizer, and how it was trained."""
    model = getattr(model, "module", model)  # unwrap DistributedDataParallel
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    (Path(directory) / TRAINING_ARGS).write_text(json.dumps(training_args, indent=2, ensure_ascii=False) + "\n")


def commit_run(model_fn):
    """Move the finished partial directory into place; the old model goes only once the new one is there."""
    model_fn, partial = Path(model_fn), partial_dir(model_fn)
    shutil.rmtree(partial / "resume", ignore_errors=True)
    if model_fn.exists():
        old = model_fn.parent / f".{model_fn.name}.old"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(model_fn, old)
        os.replace(partial, model_fn)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(partial, model_fn)


def check_checkpoint(model_fn, needed=("config.json", TRAINING_ARGS, "*.safetensors")):
    """The checkpoint directory as a Path; stops with a clear message when it is absent or lacks a file."""
    model_fn = Path(model_fn)
    if not model_fn.is_dir():
        raise UserError(f"{model_fn}: no such model directory: train one with finetune_plm_hf.py or "
                        "finetune_plm_native.py --model_fn " + str(model_fn))
    missing = [name.replace("*", "model") for name in needed if not any(model_fn.glob(name))]
    if missing:
        raise UserError(f"{model_fn}: not a checkpoint written by finetune_plm_hf.py/finetune_plm_native.py "
                        f"(missing {', '.join(missing)})")
    return model_fn


def load_checkpoint(model_fn, device="cpu"):
    """(tokenizer, model, training_args) of a directory written by either trainer."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    model_fn = check_checkpoint(model_fn)
    try:
        training_args = json.loads((model_fn / TRAINING_ARGS).read_text())
        tokenizer = AutoTokenizer.from_pretrained(model_fn)
        model = AutoModelForSequenceClassification.from_pretrained(model_fn)
    except Exception as error:  # safetensors, json and tokenizers each raise their own kinds
        raise UserError(f"{model_fn}: cannot load the checkpoint (truncated or corrupt file?): "
                        f"{first_line(error)}") from None
    return tokenizer, model.to(device).eval(), training_args


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
    states = train_states(directory)
    if not states:
        raise UserError(f"--resume: no complete saved state in {directory}; delete {Path(directory).parent} "
                        "to start afresh")
    print(f"resuming from {states[-1]}", file=sys.stderr)
    return states[-1]


def load_train_state(directory):
    import torch
    return torch.load(latest_train_state(directory) / STATE_FILE, map_location="cpu", weights_only=True)


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
