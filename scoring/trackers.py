"""Experiment trackers (--report_to tensorboard,mlflow,wandb or none; default tensorboard): every evaluation's
scores, the training loss and learning rate, and the final validation and test scores, under the same names in
every tracker, from both trainers, distill_plm.py and a hyperparameter search; and each run's flags.

Names (TensorBoard's tags, MLflow's metric keys, W&B's keys):
  train/loss, train/learning_rate        every LOG_EVERY optimizer steps, at the step
  epoch/valid_<score>, epoch/train_loss  after each epoch, at the epoch (eval/... at the step with --eval_steps)
  valid/<score>, test/<score>            the saved weights, scored once at the end, at the last step
  search/...                             a search's own run: trials and the winner's value
where <score> is a name of scoring.metrics (accuracy, macro_f1, ...). Flags: MLflow params, W&B config, a
TensorBoard text. Only the main process reports.

MLflow writes where MLFLOW_TRACKING_URI says (its default: sqlite:///mlflow.db in the working directory), into
the experiment MLFLOW_EXPERIMENT_NAME (default finetune-plm); W&B into WANDB_PROJECT (default finetune-plm), in
the mode WANDB_MODE says (offline: files under WANDB_DIR, synced later with `wandb sync`). mlflow and wandb are
optional (requirements/tracking.txt): asking for a missing one is one error line before anything runs."""
import argparse
import json
import os
import time

from utils.errors import UserError, first_line, on_failure, require
from utils.log import log

TRACKERS = ("tensorboard", "mlflow", "wandb")
DEFAULT_REPORT_TO = "tensorboard"
INSTALL = "pip install -r requirements/tracking.txt"
PROJECT = "finetune-plm"  # the MLflow experiment and W&B project when the environment names none
# a search's trials find their search's run here (they are subprocesses): nested under it in MLflow, grouped in W&B
TRACKER_PARENT_ENV = "FINETUNE_PLM_TRACKER_PARENT"
# the x axis of each name's prefix (W&B needs it said; TensorBoard and MLflow take the step given)
STEP_KEYS = {"train/": "train/step", "eval/": "eval/step", "epoch/": "epoch/epoch", "valid/": "train/step",
             "test/": "train/step", "search/": "search/trial"}
MLFLOW_PARAM_LENGTH = 6000  # MLflow's limit on a parameter's value


def report_to(text):
    """--report_to: trackers separated by commas; `none` for none, `all` for all three."""
    names = [name.strip().lower() for name in str(text).split(",") if name.strip()]
    if names == ["none"]:
        return ()
    if names == ["all"]:
        return TRACKERS
    unknown = [name for name in names if name not in TRACKERS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"{text!r}: expected some of {', '.join(TRACKERS)} separated by commas, "
                                         "or none")
    return tuple(dict.fromkeys(names))


def check_trackers(names, flag="--report_to"):
    """One line before anything runs when a tracker's package is missing."""
    for name in names:
        if name != "tensorboard":  # TensorBoard comes with requirements.txt; without it, a warning (as before)
            require([name], f"{flag} {name}", INSTALL)


class Trackers:
    """The chosen trackers of one run. enabled=False (the other processes of a distributed run): nothing.
    A tracker that fails mid-run is warned about once and dropped: the run and its model matter more."""

    def __init__(self, names, log_dir, run_name, flags, enabled=True, kind="run"):
        self.backends = []
        self.closed = False
        if not enabled:
            return
        parent = json.loads(os.environ.get(TRACKER_PARENT_ENV) or "{}")
        params = {key: value for key, value in flags.items()}
        makers = {"tensorboard": TensorBoard, "mlflow": MLflow, "wandb": Wandb}
        for name in names:
            try:
                self.backends.append(makers[name](log_dir, run_name, params, parent, kind))
            except UserError:
                raise
            except Exception as error:  # a tracking server that refuses, a W&B login missing: before training
                raise UserError(f"--report_to {name}: cannot start a run ({first_line(error)})") from None
        on_failure(lambda: self.close(status="FAILED"))  # a run that fails is marked so, not left running

    def log(self, scalars, step, prefix=""):
        """Numbers only (a NaN score is skipped: undefined for this evaluation)."""
        values = {f"{prefix}{key}": float(value) for key, value in scalars.items()
                  if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value}
        if values:
            self._each("log", values, step, prefix)

    def log_final(self, valid, test, step):
        """The saved weights' scores: valid/<score> and test/<score>."""
        from scoring.metrics import scalar_metrics
        for split, result in (("valid", valid), ("test", test)):
            if result:
                self.log(scalar_metrics(result["metrics"]), step, prefix=f"{split}/")

    def close_local(self):
        """Close the trackers that write inside the run's directory (TensorBoard, into runs/): before the
        directory moves into place, so that their last events are flushed into it, not after it has gone."""
        for backend in [backend for backend in self.backends if backend.local]:
            self.backends.remove(backend)
            try:
                backend.close("FINISHED")
            except Exception as error:
                log.warning(f"--report_to {backend.name}: closing the run failed ({first_line(error)})")

    @property
    def ids(self):
        """What a search's trials need to join its run (TRACKER_PARENT_ENV)."""
        ids = {}
        for backend in self.backends:
            ids.update(backend.ids())
        return ids

    def close(self, status="FINISHED"):
        if self.closed:
            return None
        self.closed = True
        for backend in self.backends:
            try:
                backend.close(status)
            except Exception as error:
                log.warning(f"--report_to {backend.name}: closing the run failed ({first_line(error)})")
        return None

    def _each(self, method, *args):
        for backend in list(self.backends):
            try:
                getattr(backend, method)(*args)
            except Exception as error:
                log.warning(f"--report_to {backend.name}: {first_line(error)}; no more reports to it in this run")
                self.backends.remove(backend)


def printable(value):
    return value if isinstance(value, (str, int, float, bool)) or value is None else json.dumps(value, default=str)


class TensorBoard:
    name = "tensorboard"
    local = True  # its files are in the run's directory (Trackers.close_local)

    def __init__(self, log_dir, run_name, params, parent, kind):
        self.writer = None
        if log_dir is None:  # a search's own run: its trials write TensorBoard logs of their own
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            log.warning("tensorboard is not installed; no TensorBoard logs")
            return
        self.writer = SummaryWriter(log_dir=str(log_dir))
        self.writer.add_text("flags", "\n".join(f"    {key}: {printable(value)}" for key, value in params.items()))

    def log(self, values, step, prefix):
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(key, value, step)

    def ids(self):
        return {}

    def close(self, status):
        if self.writer is not None:
            self.writer.close()


class MLflow:
    """Through MlflowClient (no global active run: a command called in process, as the tests do, leaves
    nothing behind)."""
    name = "mlflow"
    local = False

    def __init__(self, log_dir, run_name, params, parent, kind):
        from mlflow import MlflowClient
        from mlflow.entities import Param
        self.client = MlflowClient()
        experiment_name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or PROJECT
        experiment = self.client.get_experiment_by_name(experiment_name)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(experiment_name)
        tags = {"finetune_plm.kind": kind}
        if parent.get("mlflow"):
            tags["mlflow.parentRunId"] = parent["mlflow"]  # a trial, nested under its search
        self.run_id = self.client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id
        items = [Param(key, str(printable(value))[:MLFLOW_PARAM_LENGTH]) for key, value in params.items()]
        for start in range(0, len(items), 100):  # MLflow takes at most 100 params a batch
            self.client.log_batch(self.run_id, params=items[start:start + 100])

    def log(self, values, step, prefix):
        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(key, value, now, int(step)) for key, value in values.items()])

    def ids(self):
        return {"mlflow": self.run_id}

    def close(self, status):
        self.client.set_terminated(self.run_id, status=status)


class Wandb:
    name = "wandb"
    local = False  # its offline files are under WANDB_DIR, not the run's directory

    def __init__(self, log_dir, run_name, params, parent, kind):
        import wandb
        # console="off": W&B would otherwise wrap stdout and stderr, where the classifier and the run plan write
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT") or PROJECT, name=run_name,
                              config={key: printable(value) for key, value in params.items()},
                              # a search and its trials share a group, named after the search's run
                              group=parent.get("wandb_group") or (run_name if kind == "search" else None),
                              job_type=kind, reinit="create_new",
                              settings=wandb.Settings(console="off", silent=True))
        for step_key in set(STEP_KEYS.values()):
            self.run.define_metric(step_key, hidden=True)
        for prefix, step_key in STEP_KEYS.items():
            self.run.define_metric(f"{prefix}*", step_metric=step_key)

    def log(self, values, step, prefix):
        self.run.log({**values, STEP_KEYS.get(prefix, "train/step"): step})
        if prefix in ("valid/", "test/", "search/"):  # the run's results, as W&B shows them in its tables
            self.run.summary.update(values)

    def ids(self):
        return {"wandb_group": self.run.group or self.run.name}

    def close(self, status):
        self.run.finish(exit_code=0 if status == "FINISHED" else 1)
