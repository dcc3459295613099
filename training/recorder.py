"""After every evaluation, the same bookkeeping in both trainers: a history row, one line on stderr,
TensorBoard scalars, and the weights of the best evaluation so far kept on disk."""
import math
import os
import sys
from pathlib import Path

from tqdm import tqdm

from utils.checkpoint import partial_dir
from utils.metrics import selection_score, summary_line
from utils.report import TensorBoardLogger, history_row, row_metrics

BEST_WEIGHTS = "best_model.safetensors"
LOG_EVERY = 10  # optimizer steps between step-wise loss/lr logs


def log_dir(args, trainer_name):
    """TensorBoard directory: <model_fn>/runs/<trainer> (written inside the partial run until it is done)."""
    if args.log_dir:
        return Path(args.log_dir) / f"{Path(args.model_fn).name}-{trainer_name}"
    return partial_dir(args.model_fn) / "runs" / trainer_name


class EvaluationRecorder:
    """Only the main process writes; every process keeps the history (Trainer saves it in its states)."""

    def __init__(self, board_dir, directory, best_metric, is_main):
        self.board = TensorBoardLogger(board_dir, enabled=is_main)
        self.directory = Path(directory)
        self.best_metric = best_metric
        self.is_main = is_main
        self.history = []
        self.best_score = -math.inf

    def restore(self, history):
        """Continue after --resume: the rows so far, and the best score among them."""
        self.history = list(history)
        self.best_score = max((selection_score(row_metrics(row), self.best_metric) for row in self.history),
                              default=-math.inf)

    def log_step(self, step, loss, lr):
        self.board.log({"loss": loss, "learning_rate": lr}, step, prefix="train/")

    def record(self, model, epoch, step, train_loss, metrics, lr, seconds):
        """One evaluation: history, stderr, TensorBoard; the weights too if they are the best so far
        (an earlier evaluation wins a tie)."""
        row = history_row(epoch, step, train_loss, metrics, lr, seconds)
        self.history.append(row)
        if not self.is_main:
            return row
        self.board.log({key: value for key, value in row.items() if key.startswith("valid_")}, epoch, prefix="epoch/")
        self.board.log({"train_loss": train_loss}, epoch, prefix="epoch/")
        score = selection_score(metrics, self.best_metric)
        if score > self.best_score:
            self.best_score = score
            save_best_weights(model, self.directory)
        # tqdm.write: Trainer's progress bar is still on the line; this prints above it, on a line of its own
        tqdm.write(f"epoch {epoch}: train loss {train_loss:.4f}; valid {summary_line(metrics)}", file=sys.stderr)
        return row

    def close(self):
        self.board.close()


def save_best_weights(model, directory):
    from safetensors.torch import save_model as save_safetensors
    tmp = Path(directory) / f".{BEST_WEIGHTS}.tmp"
    save_safetensors(getattr(model, "module", model), str(tmp))
    os.replace(tmp, Path(directory) / BEST_WEIGHTS)


def load_best_weights(model, directory):
    from safetensors.torch import load_model as load_safetensors
    path = Path(directory) / BEST_WEIGHTS
    if path.exists():
        load_safetensors(getattr(model, "module", model), str(path))
