"""The steps every training run shares before and after the loop itself."""
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from data_load import Splits, TextClassificationDataset, load_splits
from utils.checkpoint import check_output, commit_run, partial_dir, save_model
from utils.metrics import classification_metrics
from utils.model import (UNK_WARN_SHARE, check_vocabulary, clamp_max_length, default_learning_rate,
                         extend_vocabulary, load_classifier, load_tokenizer, resolve_model_name)
from utils.report import write_report
from utils.runtime import DistributedContext, choose_device, choose_precision, distributed_context, set_seed

BEST_WEIGHTS = "best_model.safetensors"
LOG_EVERY = 10  # optimizer steps between step-wise loss/lr logs


@dataclass
class Prepared:
    """What a trainer needs before its loop: where to run, the data, the model."""
    context: DistributedContext
    device: torch.device
    precision: str
    splits: Splits
    tokenizer: object
    model: torch.nn.Module
    max_length: int
    train_set: TextClassificationDataset
    valid_set: TextClassificationDataset
    test_set: TextClassificationDataset | None


def prepare(args):
    """Device and precision, data, tokenizer and model. Every bad input or flag fails here, before
    anything is written."""
    context = distributed_context()
    device = choose_device(args.device, context.local_rank)
    precision = choose_precision(args.precision, device)
    check_output(args.model_fn, args.resume)
    set_seed(args.seed)
    splits = load_splits(args)
    tokenizer, model, max_length = build_model(args, splits)
    train_set, valid_set, test_set = make_datasets(splits, tokenizer, max_length)
    return Prepared(context, device, precision, splits, tokenizer, model, max_length, train_set, valid_set, test_set)


def build_model(args, splits):
    """Tokenizer and classifier for the run's labels; returns (tokenizer, model, max_length)."""
    name = resolve_model_name(args.pretrained_model_name)
    args.pretrained_model_name = name
    tokenizer = load_tokenizer(name)
    model = load_classifier(name, splits.labels, args.freeze_encoder)
    unknown_share = check_vocabulary(tokenizer, splits.train, args.extend_vocab)
    if args.extend_vocab == "yes" or (args.extend_vocab == "auto" and unknown_share > UNK_WARN_SHARE):
        added = extend_vocabulary(tokenizer, model, splits.train)
        print(f"--extend_vocab {args.extend_vocab}: {unknown_share:.1%} of the training words were unknown; "
              f"added {added} characters to the vocabulary", file=sys.stderr)
    if args.lr is None:
        args.lr = default_learning_rate(model)
        print(f"learning rate {args.lr:g} (default for hidden size {model.config.hidden_size})", file=sys.stderr)
    return tokenizer, model, clamp_max_length(args.max_length, model, tokenizer)


def make_datasets(splits, tokenizer, max_length):
    """Tokenized train/valid/test sets (test is None without --test_fn); valid/test keep their texts."""
    label2id = splits.label2id
    train = TextClassificationDataset(splits.train, tokenizer, max_length, label2id)
    valid = TextClassificationDataset(splits.valid, tokenizer, max_length, label2id, with_text=True)
    test = (TextClassificationDataset(splits.test, tokenizer, max_length, label2id, with_text=True)
            if splits.test else None)
    return train, valid, test


def log_dir(args, trainer_name):
    """TensorBoard directory: <model_fn>/runs/<trainer> (written inside the partial run until it is done)."""
    if args.log_dir:
        return Path(args.log_dir) / f"{Path(args.model_fn).name}-{trainer_name}"
    return partial_dir(args.model_fn) / "runs" / trainer_name


def evaluation(logits, dataset, label_names):
    """Metrics plus what the report needs to list errors: logits, gold labels, texts."""
    logits = np.asarray(logits, dtype=np.float32)
    return {"metrics": classification_metrics(logits, dataset.labels, label_names),
            "logits": logits, "labels": dataset.labels, "texts": dataset.texts}


def no_decay(name, parameter):
    """Biases and LayerNorm weights (the 1-D parameters) get no weight decay."""
    return parameter.ndim < 2


def selection_score(row, metric):
    """The number the best epoch is chosen by, higher is better: a validation metric, or minus the loss."""
    return -row["valid_loss"] if metric == "loss" else row[f"valid_{metric}"]


def save_best_weights(model, score, best_score, directory):
    """Keep the weights with the highest selection score so far on disk (an earlier epoch wins a tie);
    returns the new best score."""
    if score <= best_score:
        return best_score
    from safetensors.torch import save_model as save_safetensors
    model = getattr(model, "module", model)
    tmp = Path(directory) / f".{BEST_WEIGHTS}.tmp"
    save_safetensors(model, str(tmp))
    os.replace(tmp, Path(directory) / BEST_WEIGHTS)
    return score


def load_best_weights(model, directory):
    from safetensors.torch import load_model as load_safetensors
    path = Path(directory) / BEST_WEIGHTS
    if path.exists():
        load_safetensors(getattr(model, "module", model), str(path))


def save_run(args, trainer_name, model, tokenizer, max_length, splits, history, valid, test, extra=None):
    """Write model, reports and training record into the partial directory, then move it into place."""
    partial = partial_dir(args.model_fn)
    record = {**vars(args), "trainer": trainer_name, "max_length": max_length, "labels": splits.labels,
              "has_pairs": splits.has_pairs, "n_train": len(splits.train), "n_valid": len(splits.valid),
              "versions": _versions(), "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **(extra or {})}
    (partial / BEST_WEIGHTS).unlink(missing_ok=True)
    save_model(partial, model, tokenizer, record)
    write_report(partial, history, splits.labels, valid, test, n_errors=args.n_errors)
    commit_run(args.model_fn)
    print(f"\nsaved {args.model_fn}", file=sys.stderr)


def optimizer_steps(n_batches, gradient_accumulation_steps, n_epochs):
    return math.ceil(n_batches / gradient_accumulation_steps) * n_epochs


def _versions():
    import transformers
    return {"torch": torch.__version__, "transformers": transformers.__version__}
