"""The transformers.Trainer loop (finetune_plm_hf.py), beside the hand-written one in native_loop.py:
the TrainingArguments the flags map to, length-grouped batches, the loss both trainers share, the
evaluations handed to the shared recorder, resumable states, then the best weights evaluated on
validation and test and the run saved."""
import math
import sys
import time

import numpy as np
import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from checkpoint.run_dir import partial_dir, resume_dir, start_run
from checkpoint.train_state import latest_train_state
from data_load import LengthGroupedSampler, TextClassificationCollator, column_numpy, model_inputs
from data_load.dataset import window_rows
from data_load.long_text import pool
from scoring.metrics import trainer_compute_metrics
from training.evaluation import FIT_TEMPERATURE, evaluation
from training.finish import save_run
from training.loss import loss_function
from training.few_shot import pairs_first
from training.prepare import print_plan
from training.recorder import LOG_EVERY, EvaluationRecorder, load_best_weights, open_trackers
from utils.log import log
from utils.runtime import StopRequest, pad_to_multiple_of


def train(options, run, trainer_name, loss_fn):
    """Train run.model on run.train_set with transformers.Trainer and loss_fn (validation is scored
    unweighted, as in the native loop), then save the run (training.finish.save_run); options: the run's
    TrainingOptions (options.training_flags)."""
    context, device, precision = run.context, run.device, run.precision
    # the schedule flags as used (run.settings: --few_shot's recipe may have set some, training.few_shot)
    settings, eval_options, run_options = run.settings, options.evaluation, options.run
    model_fn = run_options.model_fn
    pairs_first(run, run_options.resume)  # the few-shot recipe's pair phase, where it applies

    training_args = TrainingArguments(
        output_dir=str(resume_dir(model_fn)),  # resumable states; the model itself is saved below
        num_train_epochs=settings.n_epochs,
        max_steps=settings.max_steps or -1,
        per_device_train_batch_size=settings.batch_size,
        per_device_eval_batch_size=settings.batch_size * 2,
        gradient_accumulation_steps=settings.gradient_accumulation_steps,
        learning_rate=run.lr,
        weight_decay=settings.weight_decay,  # Trainer exempts biases and LayerNorm weights, as the native loop does
        lr_scheduler_type="linear",
        warmup_steps=settings.warmup_ratio,  # a float below 1 is a share of all steps
        max_grad_norm=settings.max_grad_norm,
        # Sequence classifiers return a per-batch mean loss; with this on, Trainer multiplies it by the
        # process count (as if it were a token sum) and trains on and reports N times the loss under DDP.
        average_tokens_across_devices=False,
        fp16=precision == "fp16",
        bf16=precision == "bf16",
        use_cpu=device.type == "cpu",
        # "random": length grouping comes from LengthGroupedTrainer below; Trainer's group_by_length would
        # also shuffle evaluation, whose predictions must stay in dataset order for errors.tsv
        train_sampling_strategy="random",
        eval_strategy="steps" if eval_options.eval_steps else "epoch",
        eval_steps=eval_options.eval_steps,
        # --eval_steps without --save_every: a state at every evaluation, so a resumed run has its history
        save_strategy="steps" if run_options.save_every or eval_options.eval_steps else "epoch",
        save_steps=run_options.save_every or eval_options.eval_steps or 500,
        save_total_limit=run_options.save_total_limit,
        logging_strategy="steps",
        logging_steps=LOG_EVERY,
        report_to="none",  # --report_to goes through the trackers both trainers share (scoring/trackers.py)
        remove_unused_columns=False,  # model_inputs() already keeps only what a batch needs
        dataloader_pin_memory=device.type == "cuda",
        seed=settings.seed,
        data_seed=settings.seed,
    )
    partial = start_run(model_fn, run.fingerprint) if context.is_main else partial_dir(model_fn)
    recorder = EvaluationRecorder(open_trackers(options, trainer_name, context.is_main), partial, eval_options.best_metric,
                                  context.is_main, by_steps=bool(eval_options.eval_steps),
                                  patience=eval_options.early_stopping_patience,
                                  keep_last=run.keep_last_weights)
    loss = TrackedLoss(run.model, loss_fn, loss_function(None, run.splits.multi_label, run.regression_scale))
    valid_windows, text_of_window = window_rows(run.valid_set)  # sliding: Trainer evaluates windows, scored per text
    callback = RecorderCallback(recorder, StopRequest(context), loss, run.splits.multi_label,
                                run.regression_scale is not None)
    trainer = LengthGroupedTrainer(
        model=run.model,
        args=training_args,
        train_dataset=model_inputs(run.train_set),
        eval_dataset=model_inputs(valid_windows),
        data_collator=TextClassificationCollator(run.tokenizer, pad_to_multiple_of=pad_to_multiple_of(precision),
                                                 num_labels=len(run.splits.labels)),
        processing_class=run.tokenizer,
        compute_loss_func=loss,
        compute_metrics=trainer_compute_metrics(
            run.splits.labels, run.splits.multi_label, eval_options.threshold_per_label, run.regression_scale,
            None if text_of_window is None else texts_pooled(text_of_window, len(run.valid_set), run.window_pooling)),
        callbacks=[callback],
        lengths=column_numpy(run.train_set, "length") if settings.group_by_length else None,
    )
    resume_from = str(latest_train_state(resume_dir(model_fn))) if run_options.resume else None
    print_plan(run, options, trainer_name)
    trainer.train(resume_from_checkpoint=resume_from)
    if callback.stop.requested:
        recorder.close("KILLED")
        if context.is_main:
            log.info("interrupted: state saved; continue with --resume")
        sys.exit(130)

    # The best epoch's weights, evaluated once more on validation and once on test.
    load_best_weights(trainer.model, partial, context)
    # --calibrate: the temperature is fitted on validation
    valid = evaluation(text_logits(trainer, run.valid_set, run.window_pooling), run.valid_set, run.splits.labels,
                       threshold_per_label=eval_options.threshold_per_label, regression_scale=run.regression_scale,
                       temperature=FIT_TEMPERATURE if eval_options.calibrate else None)
    test = (evaluation(text_logits(trainer, run.test_set, run.window_pooling), run.test_set, run.splits.labels,
                       valid["metrics"].get("threshold"),  # multi-label: the threshold tuned on validation
                       regression_scale=run.regression_scale, temperature=valid["metrics"].get("temperature"))
            if run.test_set else None)
    recorder.finish(valid, test, trainer.state.global_step)  # the final scores; TensorBoard's files closed before the save
    if context.is_main:
        save_run(options, trainer_name, run, trainer.model, recorder.history, valid, test,
                 extra={"optimizer_steps": trainer.state.global_step})
    recorder.close()  # MLflow's and W&B's runs end once the model is saved



def text_logits(trainer, dataset, pooling):
    """Trainer's predictions, one row per text (sliding windows pooled, as the native loop does)."""
    windows, text_of_window = window_rows(dataset)
    compute_metrics, trainer.compute_metrics = trainer.compute_metrics, None  # the logits are scored by the caller
    try:
        logits = trainer.predict(model_inputs(windows)).predictions
    finally:
        trainer.compute_metrics = compute_metrics
    return logits if text_of_window is None else pool(logits, text_of_window, len(dataset), pooling)


def texts_pooled(text_of_window, n_texts, pooling):
    """compute_metrics' pooling: windows' (logits, labels) -> each text's pooled logits and its label."""
    first = np.unique(text_of_window, return_index=True)[1]  # a text's windows carry its label

    def pooled(logits, labels):
        return pool(logits, text_of_window, n_texts, pooling), labels[first]
    return pooled


class TrackedLoss:
    """Trainer's `compute_loss_func`: the loss both trainers share (training/loss.py; --class_weight in
    training, unweighted on validation as the native loop reports it), summing the training loss between
    evaluations as a tensor (no sync per step)."""

    def __init__(self, model, train_loss, valid_loss):
        self.model, self.train_loss, self.valid_loss = model, train_loss, valid_loss
        self.total, self.count = None, 0

    def __call__(self, outputs, labels, num_items_in_batch=None):
        if not self.model.training:
            return self.valid_loss(outputs.logits, labels)
        loss = self.train_loss(outputs.logits, labels)
        detached = loss.detach().float()
        self.total = detached if self.total is None else self.total + detached
        self.count += 1
        return loss

    def pop_mean(self):
        """Mean training loss since the last call, averaged over all processes."""
        if self.total is None:
            return float("nan")
        totals = torch.stack([self.total, torch.tensor(float(self.count), device=self.total.device)])
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(totals)
        self.total, self.count = None, 0
        return (totals[0] / totals[1]).item()


class LengthGroupedTrainer(Trainer):
    """Trainer with the native loop's length-grouped batches, built from the lengths as a NumPy array."""

    # The loss is a batch mean, as in the native loop: Trainer divides it by the accumulation steps (it
    # takes a compute_loss_func's loss as already scaled otherwise). A documented Trainer attribute.
    loss_is_scaled_for_ga = False

    def __init__(self, *args, lengths=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.lengths = lengths  # the training rows' token counts (None: --no_group_by_length)

    def _get_train_sampler(self, train_dataset=None):
        """The one private override, for a measured reason: Trainer's own length grouping reads the
        lengths one row at a time through datasets' Column and holds every index as a Python int, seconds
        an epoch on large data where this sampler, which takes the Arrow column as one NumPy array, takes
        milliseconds (docs/benchmarks.md, "Figures behind the code")."""
        if self.lengths is None:
            return super()._get_train_sampler(train_dataset)
        return LengthGroupedSampler(self.lengths, self.args.train_batch_size)


class RecorderCallback(TrainerCallback):
    """Hands Trainer's evaluations to the EvaluationRecorder both trainers share, and turns Ctrl-C
    into a saved state. History rows also go into Trainer's log_history, which its checkpoints save,
    so --resume gets them back."""

    def __init__(self, recorder, stop, loss, multi_label, regression=False):
        self.recorder = recorder
        self.stop = stop
        self.loss = loss
        self.multi_label = multi_label
        self.regression = regression
        self.epoch_started = time.time()

    def on_train_begin(self, args, state, control, **kwargs):
        self.recorder.restore(entry["history_row"] for entry in state.log_history
                              if "history_row" in entry and entry["history_row"]["step"] <= state.global_step)
        if self.recorder.stalled():  # resumed after early stopping had already ended the run
            control.should_training_stop = True

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.epoch_started = time.time()

    def on_step_end(self, args, state, control, **kwargs):
        if args.eval_strategy == "steps" and state.global_step == state.max_steps:
            control.should_evaluate = True  # --eval_steps: the last step is evaluated too, as in the native loop
        if self.stop.agreed():  # Ctrl-C: save a resumable state, then end training
            control.should_save = True
            control.should_training_stop = True
            self.stop.requested = True

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.recorder.log_step(state.global_step, logs["loss"], logs.get("learning_rate"))

    def on_evaluate(self, args, state, control, metrics=None, model=None, lr_scheduler=None, **kwargs):
        valid = {key[len("eval_"):]: value for key, value in metrics.items() if key.startswith("eval_")}
        valid["multi_label"] = self.multi_label  # the score titles of the printed line
        valid["regression"] = self.regression
        # per epoch: the epoch this evaluation ends (one cut short by --max_steps counts as one)
        epoch = round(state.epoch, 4) if self.recorder.by_steps else math.ceil(state.epoch - 1e-6)
        row = self.recorder.record(model, epoch, state.global_step, self.loss.pop_mean(),
                                   valid, lr_scheduler.get_last_lr()[0],
                                   time.time() - self.epoch_started)
        state.log_history.append({"history_row": row, "step": state.global_step})
        self.epoch_started = time.time()
        if self.recorder.stalled():
            control.should_training_stop = True

