"""In-process checks of what both trainers share: the one metric definition, the evaluation recorder
and its best weights, the optimizer-step schedule, resumable states, precision helpers."""
import contextlib
import dataclasses
import math

import numpy as np
import pytest
import torch

from checkpoint.train_state import latest_train_state, save_train_state, train_states
from conftest import training_options
from data_load import LengthGroupedBatchSampler
from options.training_flags import training_parser
from training.prepare import training_schedule
from training.recorder import BEST_WEIGHTS, EvaluationRecorder, load_best_weights
from utils.errors import UserError
from scoring.metrics import (ALL_SCORES, MULTI_LABEL_SCORES, REGRESSION_SCORES, SCORES, classification_metrics,
                           selection_score, summary_line)
from scoring.report import history_row, row_metrics
from utils.runtime import DistributedContext, autocast_context, pad_to_multiple_of


def metrics_of(gold, predicted, n_labels=3):
    logits = np.eye(n_labels)[predicted] * 4.0
    return classification_metrics(logits, gold, [f"c{i}" for i in range(n_labels)])


def test_every_score_reaches_metrics_history_line_and_flag():
    metrics = metrics_of([0, 1, 2, 2], [0, 1, 1, 2])
    row = history_row(1, 10, 0.5, metrics, 1e-4, 3.0)
    line = summary_line(metrics)
    best_metric = next(a for a in training_parser("x")._actions if a.dest == "best_metric")
    assert list(best_metric.choices) == list(ALL_SCORES)
    assert set(SCORES) | set(MULTI_LABEL_SCORES) | set(REGRESSION_SCORES) == set(ALL_SCORES)
    for name, score in SCORES.items():
        assert isinstance(metrics[name], float)
        assert row[f"valid_{name}"] == metrics[name]
        assert f"{score.title} {metrics[name]:.4f}" in line
    assert row_metrics(row) == {name: metrics[name] for name in SCORES}
    assert metrics["accuracy"] == 0.75 and metrics["confusion_matrix"][2] == [0, 1, 1]


def test_selection_score_is_higher_for_better():
    worse, better = metrics_of([0, 1, 2, 2], [0, 0, 0, 0]), metrics_of([0, 1, 2, 2], [0, 1, 2, 2])
    for name in SCORES:
        assert selection_score(better, name) >= selection_score(worse, name), name
    assert selection_score(better, "loss") > selection_score(worse, "loss")  # lower loss wins


def test_recorder_keeps_the_best_evaluations_weights(tmp_path):
    model = torch.nn.Linear(2, 2)
    recorder = EvaluationRecorder(tmp_path / "runs", tmp_path, "macro_f1", is_main=True)
    saved = {}
    for epoch, predicted in enumerate([[0, 0, 0, 0], [0, 1, 2, 2], [0, 1, 2, 2]], start=1):
        with torch.no_grad():
            model.weight.fill_(epoch)
        recorder.record(model, epoch, epoch * 5, 1.0 / epoch, metrics_of([0, 1, 2, 2], predicted), 1e-4, 1.0)
        saved[epoch] = (tmp_path / BEST_WEIGHTS).stat().st_mtime_ns
    recorder.close()
    assert [row["epoch"] for row in recorder.history] == [1, 2, 3]
    assert saved[3] == saved[2]  # a tie keeps the earlier evaluation
    load_best_weights(model, tmp_path, DistributedContext())
    assert model.weight.eq(2).all()

    resumed = EvaluationRecorder(tmp_path / "runs", tmp_path, "macro_f1", is_main=True)
    resumed.restore(recorder.history)
    assert resumed.best_score == pytest.approx(1.0) and len(resumed.history) == 3


def test_early_stopping_counts_evaluations_without_improvement(tmp_path):
    model = torch.nn.Linear(2, 2)
    recorder = EvaluationRecorder(tmp_path / "runs", tmp_path, "macro_f1", is_main=True, by_steps=True, patience=2)
    stalled = []
    for step, predicted in zip([5, 10, 15, 20], [[0, 0, 0, 0], [0, 1, 2, 2], [0, 1, 1, 2], [0, 1, 2, 2]]):
        recorder.record(model, step / 10, step, 0.5, metrics_of([0, 1, 2, 2], predicted), 1e-4, 1.0)
        stalled.append(recorder.stalled())
    recorder.close()
    assert stalled == [False, False, False, True]  # the best was at step 10; a tie at 20 is no improvement
    resumed = EvaluationRecorder(tmp_path / "runs", tmp_path, "macro_f1", is_main=True, patience=2)
    resumed.restore(recorder.history[:3])
    assert not resumed.stalled() and resumed.best_index == 1
    resumed.restore(recorder.history)
    assert resumed.stalled()
    assert not EvaluationRecorder(tmp_path / "r", tmp_path, "macro_f1", is_main=False).stalled()  # no patience


def test_max_steps_replaces_epochs_in_the_schedule():
    options = training_options("--batch_size", 8, "--n_epochs", 3, "--warmup_ratio", 0.1, "--max_steps", 30).schedule
    schedule = training_schedule(100, options, 1)  # 13 steps an epoch
    assert (schedule.total_steps, schedule.warmup_steps, schedule.n_epochs) == (30, 3, 3)
    options = dataclasses.replace(options, max_steps=5)
    assert (training_schedule(100, options, 1).total_steps, training_schedule(100, options, 1).n_epochs) == (5, 1)
    options = dataclasses.replace(options, max_steps=None)
    assert (training_schedule(100, options, 1).total_steps, training_schedule(100, options, 1).n_epochs) == (39, 3)


def test_class_weights():
    from training.loss import class_weights
    labels = ["neg", "neutral", "pos"]
    ids = np.array([0] * 6 + [1] * 3 + [2] * 1)
    assert class_weights("none", labels, ids) is None
    assert class_weights("balanced", labels, ids) == pytest.approx([10 / 18, 10 / 9, 10 / 3])
    assert class_weights("1,2,3", labels, ids) == pytest.approx([1, 2, 3])
    assert class_weights("pos=4, neutral=0.5", labels, ids) == pytest.approx([1, 0.5, 4])
    for spec, message in [("1,2", "2 weights for 3 classes"), ("happy=2", "no class 'happy'"),
                          ("heavy", "expected `balanced`"), ("0,1,1", "above 0"), ("1,-1,1", "above 0")]:
        with pytest.raises(UserError, match=message):
            class_weights(spec, labels, ids)


def test_weighted_loss_weighs_each_example_by_its_class():
    from training.loss import loss_function
    logits = torch.tensor([[2.0, 0.0], [2.0, 0.0], [2.0, 0.0]])  # always predicts class 0
    labels = torch.tensor([0, 0, 1])  # the one class-1 example is wrong
    per_example = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    plain = loss_function()(logits, labels)
    weighted = loss_function(np.array([1.0, 3.0], dtype=np.float32))(logits, labels)
    assert plain == pytest.approx(per_example.mean().item())
    assert weighted == pytest.approx(((per_example * torch.tensor([1.0, 1.0, 3.0])).sum() / 5).item())
    assert weighted > plain  # the mistake on the rare class costs more
    half = loss_function(None)(logits.half(), labels)  # computed in fp32 under autocast too
    assert half.dtype == torch.float32


@pytest.mark.parametrize("n, batch_size, accumulation, world_size", [
    (432, 32, 1, 1), (433, 32, 3, 1), (100, 8, 2, 2), (1001, 16, 4, 3), (7, 32, 1, 1)])
def test_schedule_matches_the_sampler(n, batch_size, accumulation, world_size):
    options = training_options("--batch_size", batch_size, "--gradient_accumulation_steps", accumulation,
                               "--n_epochs", 3).schedule
    schedule = training_schedule(n, options, world_size)
    for rank in range(world_size):
        sampler = LengthGroupedBatchSampler(list(range(n)), batch_size, world_size=world_size, rank=rank)
        assert len(list(sampler)) == len(sampler) == schedule.batches_per_epoch
    assert schedule.steps_per_epoch == math.ceil(schedule.batches_per_epoch / accumulation)
    assert schedule.total_steps == 3 * schedule.steps_per_epoch
    assert schedule.warmup_steps == math.ceil(0.1 * schedule.total_steps)


def test_resumable_states_keep_the_newest_complete_ones(tmp_path):
    for step in (10, 20, 30):
        save_train_state(tmp_path, step, {"step": step}, keep=2)
    assert [p.name for p in train_states(tmp_path)] == ["checkpoint-20", "checkpoint-30"]
    (tmp_path / "checkpoint-40").mkdir()  # killed before its state file was written
    assert latest_train_state(tmp_path).name == "checkpoint-30"
    with pytest.raises(UserError, match="no complete, readable saved state"):
        latest_train_state(tmp_path / "nothing")


def test_an_unreadable_newest_state_falls_back_to_the_one_before(tmp_path, capsys):
    for step in (10, 20):
        save_train_state(tmp_path, step, {"weights": torch.ones(1000)}, keep=2)
    newest = tmp_path / "checkpoint-20" / "train_state.pt"
    newest.write_bytes(newest.read_bytes()[:500])  # the disk filled up while it was written
    assert latest_train_state(tmp_path).name == "checkpoint-10"
    assert "checkpoint-20 cannot be read" in capsys.readouterr().err
    (tmp_path / "checkpoint-10" / "train_state.pt").write_bytes(b"garbage")
    with pytest.raises(UserError, match="no complete, readable saved state"):
        latest_train_state(tmp_path)


def test_precision_helpers():
    cpu = torch.device("cpu")
    a, b = torch.ones(4, 4), torch.ones(4, 4)
    context = autocast_context(cpu, "fp32")
    assert isinstance(context, contextlib.nullcontext)
    with context:  # built once, entered every step
        with context:
            assert (a @ b).dtype == torch.float32
    with autocast_context(cpu, "bf16"):  # the same helper's half-precision context does cast matmuls
        assert (a @ b).dtype == torch.bfloat16
    assert pad_to_multiple_of("fp32") is None and pad_to_multiple_of("bf16") == 8


def _load_best_weights_on(rank, store, directories, results):
    """One of two gloo processes: each starts from its own weights and looks for the best weights in its
    own directory, as on two machines; only rank 0's directory holds them."""
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    torch.manual_seed(rank)
    model = torch.nn.Linear(3, 2)
    load_best_weights(model, directories[rank], DistributedContext(rank=rank, world_size=2))
    torch.save(model.state_dict(), results[rank])
    torch.distributed.destroy_process_group()


def test_best_weights_reach_a_process_without_the_partial_directory(tmp_path):
    """Rank 1's directory does not exist (another machine): it still ends with rank 0's best weights."""
    best = torch.nn.Linear(3, 2)
    with torch.no_grad():
        best.weight.fill_(7.0)
        best.bias.fill_(-1.0)
    (tmp_path / "rank0").mkdir()
    from safetensors.torch import save_model
    save_model(best, str(tmp_path / "rank0" / BEST_WEIGHTS))
    directories = [str(tmp_path / "rank0"), str(tmp_path / "elsewhere")]
    results = [str(tmp_path / f"result{rank}.pt") for rank in range(2)]
    torch.multiprocessing.spawn(_load_best_weights_on, args=(str(tmp_path / "store"), directories, results),
                                nprocs=2, join=True)
    for result in results:
        state = torch.load(result)
        assert state["weight"].eq(7.0).all() and state["bias"].eq(-1.0).all()


def test_one_logger_main_process_only_below_errors(capsys):
    """The user-visible forms stay `warning: ...`/`error: ...`; a non-main process of a distributed run
    logs errors only (a data warning prints once, not once per process)."""
    from utils.log import log, setup_logging
    try:
        setup_logging(rank=0)
        log.info("note: plain")
        log.warning("a warning")
        log.error("an error")
        assert capsys.readouterr().err.splitlines() == ["note: plain", "warning: a warning", "error: an error"]
        setup_logging(rank=1)
        log.info("note: plain")
        log.warning("a warning")
        log.error("an error")
        assert capsys.readouterr().err.splitlines() == ["error: an error"]
    finally:
        setup_logging(rank=0)
