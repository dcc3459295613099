"""Cross-validation: `--cv K` trains K models, each on K-1 folds of the training data, and collects every
training row's out-of-fold probabilities (what cleanlab needs to find label errors: find_label_errors.py)
and each fold's scores.

The trainer script started with --cv collects (cross_validate below). It checks every flag and the data
once, as any run does (training.prepare, which also tokenizes the data into the cache the folds read),
then runs each fold as a subprocess of the same script, as a hyperparameter search runs its trials
(training/hp_search.py): the same flags plus --cv_fold k and the fold's own --model_fn inside the partial
directory. A fold's run (data_load.splits: train on the other folds, validate on --valid_fn or on
--valid_ratio of them, test on fold k) saves an ordinary model whose test scores are the fold's and which
also holds the held-out rows' probabilities (training.finish.HELD_OUT). The partial directory holds
  cv.json             the plan (folds, seed, data by content): a --cv run to --resume
  cv_folds/fold-k/    each finished fold (its metrics, history, reports and probabilities; the weights go)
  final/              --cv_final: the model trained on all the data, as without --cv
A fold is the unit of --resume: a finished one is not trained again, an interrupted one continues from
its own resumable state (or starts again). At the end the partial directory, with oof_predictions.parquet
and cv_metrics.json (and the final model's files), becomes --model_fn."""
import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np

from checkpoint.run_dir import CV_FILE, CV_METRICS, commit_run, partial_dir, resumable, start_run
from options.training_flags import command_line
from training.finish import HELD_OUT
from training.trial import FOLD_ENV
from utils.errors import UserError, first_line
from utils.files import atomic_write
from utils.log import log
from utils.processes import start_worker, wait_for_worker

OOF_FILE = "oof_predictions.parquet"
FOLDS_DIR = "cv_folds"
FINAL_DIR = "final"
OOF_METADATA_KEY = b"finetune_plm"  # the Parquet schema metadata: labels, data digest, folds (find_label_errors.py)
# the per-fold scores printed and averaged (metrics.json holds every score)
SHOWN = ("accuracy", "macro_f1", "weighted_f1", "micro_f1", "mcc", "ece", "loss")
# a fold's files not worth keeping: the weights (90 MB each for MiniLM) and its TensorBoard logs
DROPPED = ("model.safetensors", "runs")


def cross_validate(options, trainer_name, script):
    """The --cv run: every fold this machine has not finished, as a subprocess of `script`; --cv_final; then
    the out-of-fold table and the scores, committed as --model_fn. options: the run's TrainingOptions."""
    from training.prepare import prepare
    from utils.runtime import distributed_context
    if distributed_context().world_size > 1:
        raise UserError("--cv runs each fold as a process of its own: start it without torchrun or accelerate "
                        "launch; to spread the folds over machines, see --cv_fold")
    run = prepare(options, trainer_name)  # every flag and the data checked once, tokenized into the folds' cache
    run.model = None  # each fold loads its own
    model_fn, k = options.run.model_fn, options.cross_validation.cv
    partial = partial_dir(model_fn)
    plan = {"folds": k, "seed": options.schedule.seed, "data": run.fingerprint["data"],
            "rows": len(run.splits.pool), "labels": run.splits.labels}
    if options.run.resume:
        if not (partial / CV_FILE).exists():
            raise UserError(f"--resume: {partial} holds another interrupted run, not a --cv run: resume it without "
                            "--cv, or delete it to start afresh")
        before = json.loads((partial / CV_FILE).read_text())
        if before != plan:
            changed = [key for key in plan if before.get(key) != plan[key]]
            raise UserError(f"--resume: the interrupted --cv run of {model_fn} had other {', '.join(changed)}: rerun it "
                            f"as it was, or delete {partial} to start afresh")
    start_run(model_fn, run.fingerprint)
    if not (partial / CV_FILE).exists():
        write_json(partial / CV_FILE, plan)
    folds_dir = partial / FOLDS_DIR
    folds_dir.mkdir(exist_ok=True)
    done = [fold for fold in range(k) if (folds_dir / f"fold-{fold}" / HELD_OUT).exists()]
    log.info(f"***** Cross-validation ({trainer_name}): {k} folds of {len(run.splits.pool)} training rows *****\n"
             f"  each fold: trained on the other {k - 1} folds, validated on "
             + (f"{options.data.valid_fn}" if options.data.valid_fn else f"{options.data.valid_ratio:.0%} of them")
             + ", its probabilities predicted by the model that never saw it"
             + (f"\n  continuing: folds {', '.join(map(str, done))} are done" if done else "")
             + ("\n  then one model on all the data (--cv_final)" if options.cross_validation.cv_final else ""))
    for fold in range(k):
        if fold not in done:
            run_fold(options, script, fold, folds_dir / f"fold-{fold}")
    if options.cross_validation.cv_final:
        run_unit(options, script, "the final model (--cv_final)", partial / FINAL_DIR,
                 {"cv": None, "cv_final": False, "cv_fold": None})
    held_out = [read_held_out(folds_dir / f"fold-{fold}", fold, run.splits) for fold in range(k)]
    table = oof_table(options, run.splits, held_out)
    scores = fold_scores(options, folds_dir, k, run.splits, held_out)
    try:
        write_parquet(partial / OOF_FILE, table)
        write_json(partial / CV_METRICS, scores)
        if options.cross_validation.cv_final:  # the final model's files become --model_fn's
            for entry in (partial / FINAL_DIR).iterdir():
                os.replace(entry, partial / entry.name)
            (partial / FINAL_DIR).rmdir()
    except OSError as error:
        raise UserError(f"{partial}: cannot write the cross-validation ({first_line(error)}); {model_fn} is "
                        "unchanged") from None
    from scoring.report import format_table
    print(f"\ncross-validation, {k} folds (scores on each held-out fold; {CV_METRICS}):\n"
          + format_table(scores["table"], list(scores["table"][0])))
    (partial / CV_FILE).unlink()
    commit_run(model_fn)
    log.info(f"\nsaved {model_fn}: {OOF_FILE} ({len(table)} rows), {CV_METRICS}"
             + (", and the model trained on all the data" if options.cross_validation.cv_final else ""))


def write_json(path, value):
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def run_fold(options, script, fold, fold_dir):
    run_unit(options, script, f"fold {fold} of {options.cross_validation.cv}", fold_dir, {"cv_fold": fold, "cv_final": False})
    for name in DROPPED:
        path = fold_dir / name
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


def run_unit(options, script, what, model_fn, changed):
    """One fold (or the final model) as a subprocess of the trainer script with `changed` flags and its own
    --model_fn; an interrupted one continues from its own resumable state."""
    resume = resumable(model_fn)
    log.info(f"\n***** {what}" + (" (continuing)" if resume else "") + " *****")
    flags = {**options.record, **changed, "model_fn": str(model_fn), "resume": resume}
    if "cv_fold" in changed:
        flags["test_fn"] = None  # a fold's test set is its held-out fold; --test_fn scores the final model
    child = start_worker([str(script), *command_line(flags)], env={FOLD_ENV: "1"}, stdin=subprocess.DEVNULL,
                         stdout=sys.stderr)
    try:
        status = wait_for_worker(child)  # a SIGTERM whose exception was lost stops it too (utils.errors)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the fold keeps what it saved; --resume continues it
        child.send_signal(signal.SIGTERM)
        child.wait()
        raise
    if status != 0:
        how = f"was killed by {signal.Signals(-status).name}" if status < 0 else f"failed with exit status {status}"
        raise UserError(f"{what} {how} (its messages are above)")


def read_held_out(fold_dir, fold, splits):
    """(pool positions, probabilities) of a finished fold, checked to be the rows this run puts in it (a fold
    copied from another machine must come from the same data, seed and --cv)."""
    try:
        with np.load(fold_dir / HELD_OUT) as saved:
            rows, probabilities = saved["rows"], saved["probabilities"]
    except (OSError, ValueError, KeyError) as error:
        raise UserError(f"{fold_dir / HELD_OUT}: cannot read it ({first_line(error)}): delete {fold_dir} and "
                        "--resume to train that fold again") from None
    position_of_row = {row: position for position, row in enumerate(splits.pool.indices
                                                                       if splits.pool.indices is not None
                                                                       else range(len(splits.pool)))}
    positions = np.array([position_of_row.get(int(row), -1) for row in rows])
    expected = np.flatnonzero(splits.folds == fold)
    if (len(positions) != len(expected) or set(positions.tolist()) != set(expected.tolist())
            or probabilities.shape != (len(rows), len(splits.labels))):
        raise UserError(f"{fold_dir}: was trained on other rows than this run's fold {fold} (other data, --seed or "
                        f"--cv): delete it and --resume to train that fold again")
    return positions, probabilities


def oof_table(options, splits, held_out):
    """Every training row once, in file order: where it is (file, line), its text, the given label, the
    fold that held it out and that fold model's probabilities."""
    import pyarrow as pa
    from scoring.decision import choose_labels
    n, n_labels = len(splits.pool), len(splits.labels)
    probabilities = np.zeros((n, n_labels), dtype=np.float32)
    for positions, fold_probabilities in held_out:
        probabilities[positions] = fold_probabilities
    pool = splits.pool
    multi_label = splits.multi_label
    _, predicted_ids = choose_labels(probabilities, multi_label, None, 0.5 if multi_label else None)
    labels = splits.labels
    predicted = [[labels[i] for i in ids] for ids in predicted_ids] if multi_label else [
        labels[ids[0]] for ids in predicted_ids]
    columns = {"file": pa.array([pool.name] * n), "line": pool.column("line"), "text": pool.column("text")}
    if splits.has_pairs:
        columns["text_pair"] = pool.column("text_pair")
    columns.update({"label": pool.column("label"), "predicted": pa.array(predicted),
                    "fold": pa.array(splits.folds.astype(np.int8)),
                    "probabilities": pa.FixedSizeListArray.from_arrays(pa.array(probabilities.ravel()), n_labels)})
    metadata = {"labels": labels, "multi_label": multi_label, "train_fn": pool.name, "digest": pool.digest,
                "folds": options.cross_validation.cv, "seed": options.schedule.seed,
                "columns": {"text_column": options.data.text_column, "text_pair_column": options.data.text_pair_column,
                            "label_column": options.data.label_column, "delimiter": options.data.delimiter,
                            "label_separator": options.data.labeling.separator,
                            "label_columns": options.record.get("label_columns"),
                            "label_names_fn": options.record.get("label_names_fn"),
                            "max_train_samples": options.data.max_train_samples}}
    table = pa.table(columns)
    return table.replace_schema_metadata({OOF_METADATA_KEY: json.dumps(metadata, ensure_ascii=False)})


def write_parquet(path, table):
    import pyarrow.parquet as pq
    temporary = path.with_name(path.name + ".tmp")
    pq.write_table(table, temporary)
    os.replace(temporary, path)


def fold_scores(options, folds_dir, k, splits, held_out):
    """cv_metrics.json: each fold's scores on its held-out rows, their mean and standard deviation (over
    the folds, ddof=1 as in reports of K-fold results), the scores of all out-of-fold predictions pooled,
    and the printed table."""
    from scoring.metrics import classification_metrics, multi_label_metrics
    folds = []
    for fold in range(k):
        fold_dir = folds_dir / f"fold-{fold}"
        metrics = json.loads((fold_dir / "metrics.json").read_text())
        record = json.loads((fold_dir / "training_args.json").read_text())
        folds.append({"fold": fold, "n_train": record.get("n_train"), "n_valid": record.get("n_valid"),
                      "n_held_out": len(held_out[fold][0]), **metrics["test"]})
    shown = [name for name in SHOWN if all(isinstance(fold.get(name), (int, float)) for fold in folds)]
    mean = {name: float(np.mean([fold[name] for fold in folds])) for name in shown}
    std = {name: float(np.std([fold[name] for fold in folds], ddof=1)) for name in shown}
    probabilities = np.zeros((len(splits.pool), len(splits.labels)), dtype=np.float32)
    for positions, fold_probabilities in held_out:
        probabilities[positions] = fold_probabilities
    logits = np.log(np.clip(probabilities, 1e-7, 1.0))  # softmax(log p) = p: the pooled scores of the probabilities
    from data_load.labels import label_ids, multi_hot
    if splits.multi_label:
        values, rows = splits.pool.flat_labels()
        gold = multi_hot(rows.to_numpy(), label_ids(values, splits.labels).to_numpy(), len(splits.pool),
                         len(splits.labels))
        logits = np.log(np.clip(probabilities, 1e-7, 1 - 1e-7)) - np.log(np.clip(1 - probabilities, 1e-7, 1))
        pooled = multi_label_metrics(logits, gold, splits.labels, 0.5)
    else:
        gold = label_ids(splits.pool.column("label"), splits.labels).to_numpy()
        pooled = classification_metrics(logits, gold, splits.labels)
    table = [{"fold": str(fold["fold"]), "held out": fold["n_held_out"], **{name: fold[name] for name in shown}}
             for fold in folds]
    table.append({"fold": "mean ± std", "held out": len(splits.pool),
                  **{name: f"{mean[name]:.4f} ± {std[name]:.4f}" for name in shown}})
    return {"folds": folds, "mean": mean, "std": std, "out_of_fold": {name: pooled[name] for name in shown
                                                                      if name in pooled},
            "k": k, "seed": options.schedule.seed, "table": table}
