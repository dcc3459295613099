"""The end of a run: the best weights evaluated, the model, reports and training record written into
the partial directory, which then moves into place."""
import platform
import time
from pathlib import Path

import numpy as np
import torch

from checkpoint.lora import trained_share
from checkpoint.model_card import write_model_card
from checkpoint.pretrained import output_in_label_units
from checkpoint.run_dir import commit_run, partial_dir
from checkpoint.saved_model import CALIBRATION_KEY, save_model
from options.training_flags import flag_defaults
from scoring.report import write_report
from scoring.scores import probabilities_of
from training.recorder import BEST_WEIGHTS
from utils.errors import UserError, first_line
from utils.log import log


def save_run(options, trainer_name, run, model, history, valid, test, extra=None):
    """options: the run's TrainingOptions; training_args.json holds every flag as given (options.record), then
    the settings as resolved (run.resolved_settings) over them, then what the run found."""
    model_fn = options.run.model_fn
    partial = partial_dir(model_fn)
    splits = run.splits
    trained, every = trained_share(model)
    record = {**options.record, **run.resolved_settings(), "trainer": trainer_name, "labels": splits.labels,
              "has_pairs": splits.has_pairs, "n_train": len(splits.train), "n_valid": len(splits.valid),
              "precision": run.precision, "world_size": run.context.world_size, "multi_label": splits.multi_label,
              # multi-label: the decision threshold tuned on validation, which classify_plm.py applies
              **({"threshold": valid["metrics"]["threshold"]} if splits.multi_label else {}),
              # --calibrate: the temperature fitted on validation, which every classifier divides the logits by
              **({CALIBRATION_KEY: valid["metrics"]["temperature"]} if "temperature" in valid["metrics"] else {}),
              "trained_parameters": trained, "all_parameters": every,
              "data": data_record(splits), "versions": _versions(), "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              **(extra or {})}
    if run.regression_scale is not None:  # the saved model outputs the number itself (checkpoint.pretrained)
        output_in_label_units(model, run.regression_scale)
    try:
        save_model(partial, model, run.tokenizer, record)
        write_report(partial, history, splits.labels, valid, test, n_errors=options.evaluation.n_errors)
        write_model_card(partial, flag_defaults(), name=Path(model_fn).name)
        if options.cross_validation.cv_fold is not None:  # a fold of --cv: its held-out rows' probabilities
            write_held_out(partial / HELD_OUT, splits.test, test["logits"], splits.multi_label)
    except Exception as error:  # disk full or permissions: OSError, or safetensors' own error type
        raise UserError(f"{partial}: cannot write the model ({first_line(error)}); {model_fn} is unchanged") from None
    # the best weights go only now: a failed save above keeps them for --resume
    (partial / BEST_WEIGHTS).unlink(missing_ok=True)
    commit_run(model_fn)
    log.info(f"\nsaved {model_fn}")


def check_publishing(push_to_hub):
    """--push_to_hub (its value), checked before anything is read or trained (a token, a Hub that answers and
    lets it write there): the repository id with its namespace, or None without the flag."""
    from utils.hub import check_push_access
    return check_push_access(push_to_hub) if push_to_hub else None


def publish(options, repo_id, is_main=True):
    """The saved model uploaded to repo_id (from check_publishing), by the main process; the run still holds
    the model's lock, so no other run replaces the directory during the upload. A failure is one line naming
    the command that pushes it later: the model stays saved. options: the run's TrainingOptions."""
    if repo_id and is_main:
        from checkpoint.publish import push_model
        push_model(options.run.model_fn, repo_id, options.run.hub_private, flag_defaults())


def data_record(splits):
    """The data the model was trained and scored on, for its card: each split's source, content digest (the
    one --resume compares) and rows, and how the split was made when it was not a file of its own."""
    record = {}
    for name, split in (("train", splits.train), ("valid", splits.valid), ("test", splits.test)):
        if split is None:
            continue
        notes = []
        if name == "valid" and split.rows is splits.train.rows:
            notes.append("split from the training data (--valid_ratio, seeded, stratified)")
        if name == "train" and splits.valid.rows is split.rows:
            notes.append("what the validation split left")
        if split.sampled:
            notes.append("a seeded random subset (--max_train_samples / --max_eval_samples)")
        record[name] = {"source": split.name, "digest": split.digest, "rows": len(split), "note": "; ".join(notes)}
    return record


HELD_OUT = "cv_held_out.npz"  # in a fold's model directory (training.cross_validation collects it)


def write_held_out(path, held_out, logits, multi_label):
    """The rows of the held-out fold (positions in the training source) and their probabilities."""
    with open(path, "wb") as f:
        np.savez(f, rows=held_out.indices, probabilities=probabilities_of(logits, multi_label))


def _versions():
    """The libraries the model was trained with, as transformers' Trainer lists them in its model cards."""
    import datasets
    import tokenizers
    import transformers
    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__, "datasets": datasets.__version__,
            "python": platform.python_version()}
