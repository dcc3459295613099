"""After every evaluation, the same bookkeeping in both trainers: a history row, one line on stderr, the
trackers' scalars (--report_to: TensorBoard, MLflow, W&B; scoring/trackers.py), the weights of the best
evaluation so far kept on disk, and, in a trial of a hyperparameter search, the score reported to its Optuna
trial, which may stop a hopeless one."""
import math
from pathlib import Path

from checkpoint.run_dir import partial_dir
from scoring.metrics import selection_score, summary_line
from scoring.report import history_row, row_metrics
from scoring.trackers import Trackers
from training.trial import open_trial
from utils.files import atomic_write
from utils.log import log

BEST_WEIGHTS = "best_model.safetensors"
LOG_EVERY = 10  # optimizer steps between step-wise loss/lr logs


def log_dir(run_options, trainer_name):
    """TensorBoard directory: <model_fn>/runs/<trainer> (written inside the partial run until it is done), or
    under --log_dir. run_options: RunOptions (options.training_flags)."""
    if run_options.log_dir:
        return Path(run_options.log_dir) / f"{Path(run_options.model_fn).name}-{trainer_name}"
    return partial_dir(run_options.model_fn) / "runs" / trainer_name


def open_trackers(options, trainer_name, is_main):
    """The run's trackers (--report_to), named after the model directory and the trainer, with its flags
    (options: TrainingOptions); TensorBoard writes into log_dir. Only the main process reports."""
    run_options = options.run
    return Trackers(run_options.report_to,
                    log_dir(run_options, trainer_name) if "tensorboard" in run_options.report_to else None,
                    f"{Path(run_options.model_fn).name}-{trainer_name}", options.record, enabled=is_main)


class EvaluationRecorder:
    """Every process keeps the history and the best score (Trainer saves the history in its states;
    the early-stopping decision must be the same everywhere); only the main process writes.

    by_steps: evaluations every --eval_steps optimizer steps, logged against the step; else once per
    epoch, logged against the epoch. patience: --early_stopping_patience (None: never stop early).
    keep_last: the last evaluation's weights are kept, not the best's (a validation set too small to choose by:
    training.few_shot.keeps_last_weights)."""

    def __init__(self, trackers, directory, best_metric, is_main, by_steps=False, patience=None, keep_last=False):
        """trackers: a scoring.trackers.Trackers (open_trackers), or a directory for TensorBoard alone."""
        self.trackers = (trackers if isinstance(trackers, Trackers)
                         else Trackers(("tensorboard",), trackers, Path(directory).name, {}, enabled=is_main))
        self.directory = Path(directory)
        self.best_metric = best_metric
        self.is_main = is_main
        self.by_steps = by_steps
        self.patience = patience
        self.keep_last = keep_last
        self.history = []
        self.best_score = -math.inf
        self.best_index = -1
        self.trial = open_trial() if is_main else None  # a trial of --hp_search (a subprocess of the search)

    def restore(self, history):
        """Continue after --resume: the rows so far, and the best among them."""
        self.history, self.best_score, self.best_index = [], -math.inf, -1
        for row in history:
            self._keep(row, row_metrics(row))

    def log_step(self, step, loss, lr):
        self.trackers.log({"loss": loss, "learning_rate": lr}, step, prefix="train/")

    def record(self, model, epoch, step, train_loss, metrics, lr, seconds):
        """One evaluation: history, stderr, TensorBoard; the weights too if they are the best so far
        (an earlier evaluation wins a tie)."""
        row = history_row(epoch, step, train_loss, metrics, lr, seconds)
        improved = self._keep(row, metrics)
        if not self.is_main:
            return row
        prefix, at = ("eval/", step) if self.by_steps else ("epoch/", epoch)
        self.trackers.log({key: value for key, value in row.items() if key.startswith("valid_")}, at, prefix=prefix)
        self.trackers.log({"train_loss": train_loss}, at, prefix=prefix)
        if improved:
            save_best_weights(model, self.directory)
        where = f"step {step} (epoch {epoch})" if self.by_steps else f"epoch {epoch}"
        log.info(f"{where}: train loss {train_loss:.4f}; valid {summary_line(metrics)}")
        if self.stalled():
            best = self.history[self.best_index]
            log.info(f"early stopping: {self.best_metric} has not improved for {self.patience} evaluations "
                 f"(best {best['valid_' + self.best_metric]:.4f} at step {best['step']})")
        if self.trial:  # the pruner compares trials at the same epoch, or the same step with --eval_steps
            self.trial.report(metrics[self.best_metric], step if self.by_steps else epoch, epoch, self.by_steps)
        return row

    def stalled(self):
        """--early_stopping_patience evaluations in a row without a better --best_metric."""
        return self.patience is not None and len(self.history) - 1 - self.best_index >= self.patience

    def _keep(self, row, metrics):
        self.history.append(row)
        score = selection_score(metrics, self.best_metric)
        if score > self.best_score or self.keep_last:
            self.best_score, self.best_index = score, len(self.history) - 1
            return True
        return False

    def finish(self, valid, test, step):
        """The saved weights' final scores (valid/..., test/...) to the trackers, before the run is saved:
        TensorBoard's files, inside the partial directory, are closed here, to move into place with the model;
        the other trackers' runs end with close() once the model is saved (a failed save marks them FAILED)."""
        self.trackers.log_final(valid, test, step)
        self.trackers.close_local()

    def close(self, status="FINISHED"):
        self.trackers.close(status)


def save_best_weights(model, directory):
    from safetensors.torch import save_model as save_safetensors
    with atomic_write(Path(directory) / BEST_WEIGHTS) as tmp:
        save_safetensors(getattr(model, "module", model), str(tmp))


def load_best_weights(model, directory, context):
    """The best evaluation's weights into the model of every process. Only rank 0 writes them, into its
    own partial directory, which a process on another machine does not have: rank 0 reads them and
    sends them to the others (both trainers)."""
    import torch
    model = getattr(model, "module", model)
    if context.is_main:
        from safetensors.torch import load_model as load_safetensors
        path = Path(directory) / BEST_WEIGHTS
        if path.exists():
            load_safetensors(model, str(path))
    if context.enabled:
        for tensor in model.state_dict().values():
            torch.distributed.broadcast(tensor, src=0)
