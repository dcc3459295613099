"""Fine-tune a pretrained language model for sentence classification with transformers.Trainer.

Runs unchanged on one CPU/GPU or under `torchrun --nproc_per_node=N` / `accelerate launch`."""
import math
import sys
import time

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from data_load import LengthGroupedSampler, TextClassificationCollator, column_numpy, model_inputs
from training.evaluation import evaluation
from training.finish import save_run
from training.loss import loss_function
from training.prepare import prepare, print_plan
from training.recorder import LOG_EVERY, EvaluationRecorder, load_best_weights, log_dir
from utils.args import training_parser
from utils.checkpoint import latest_train_state, partial_dir, resume_dir, start_run
from utils.errors import exit_on_user_error
from utils.metrics import trainer_compute_metrics
from utils.runtime import StopRequest, pad_to_multiple_of


def main():
    args = training_parser(__doc__).parse_args()
    run = prepare(args, "hf")  # device, data, model; bad input fails here, before anything is written
    context, device, precision = run.context, run.device, run.precision

    training_args = TrainingArguments(
        output_dir=str(resume_dir(args.model_fn)),  # resumable states; the model itself is saved below
        num_train_epochs=args.n_epochs,
        max_steps=args.max_steps or -1,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size * 2,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        learning_rate=run.lr,
        weight_decay=args.weight_decay,  # Trainer exempts biases and LayerNorm weights, as the native loop does
        lr_scheduler_type="linear",
        warmup_steps=args.warmup_ratio,  # a float below 1 is a share of all steps
        max_grad_norm=args.max_grad_norm,
        # Sequence classifiers return a per-batch mean loss; with this on, Trainer multiplies it by the
        # process count (as if it were a token sum) and trains on and reports N times the loss under DDP.
        average_tokens_across_devices=False,
        fp16=precision == "fp16",
        bf16=precision == "bf16",
        use_cpu=device.type == "cpu",
        train_sampling_strategy="random" if args.no_group_by_length else "group_by_length",
        eval_strategy="steps" if args.eval_steps else "epoch",
        eval_steps=args.eval_steps,
        # --eval_steps without --save_every: a state at every evaluation, so a resumed run has its history
        save_strategy="steps" if args.save_every or args.eval_steps else "epoch",
        save_steps=args.save_every or args.eval_steps or 500,
        save_total_limit=args.save_total_limit,
        logging_strategy="steps",
        logging_steps=LOG_EVERY,
        report_to="none",  # TensorBoard goes through the logger both trainers share
        remove_unused_columns=False,  # model_inputs() already keeps only what a batch needs
        dataloader_pin_memory=device.type == "cuda",
        seed=args.seed,
        data_seed=args.seed,
    )
    partial = start_run(args.model_fn, run.fingerprint) if context.is_main else partial_dir(args.model_fn)
    recorder = EvaluationRecorder(log_dir(args, "hf"), partial, args.best_metric, context.is_main,
                                  by_steps=bool(args.eval_steps), patience=args.early_stopping_patience)
    callback = RecorderCallback(recorder, StopRequest(context))
    trainer = LossTrackingTrainer(
        model=run.model,
        args=training_args,
        train_dataset=model_inputs(run.train_set),
        eval_dataset=model_inputs(run.valid_set),
        data_collator=TextClassificationCollator(run.tokenizer, pad_to_multiple_of=pad_to_multiple_of(precision),
                                                 num_labels=len(run.splits.labels)),
        processing_class=run.tokenizer,
        compute_metrics=trainer_compute_metrics(run.splits.labels, run.splits.multi_label, args.threshold_per_label),
        callbacks=[callback],
    )
    callback.trainer = trainer
    trainer.lengths = column_numpy(run.train_set, "length")
    trainer.multi_label = run.splits.multi_label
    trainer.loss_fn = loss_function(run.class_weights, run.splits.multi_label)
    resume_from = str(latest_train_state(resume_dir(args.model_fn))) if args.resume else None
    print_plan(run, args, "hf")
    trainer.train(resume_from_checkpoint=resume_from)
    recorder.close()
    if callback.stop.requested:
        if context.is_main:
            print("interrupted: state saved; continue with --resume", file=sys.stderr)
        sys.exit(130)

    # The best epoch's weights, evaluated once more on validation and once on test.
    load_best_weights(trainer.model, partial)
    valid = evaluation(trainer.predict(model_inputs(run.valid_set)).predictions, run.valid_set, run.splits.labels,
                       threshold_per_label=args.threshold_per_label)
    test = (evaluation(trainer.predict(model_inputs(run.test_set)).predictions, run.test_set, run.splits.labels,
                       valid["metrics"].get("threshold"))  # multi-label: the threshold tuned on validation
            if run.test_set else None)
    if context.is_main:
        save_run(args, "hf", run, trainer.model, recorder.history, valid, test,
                 extra={"optimizer_steps": trainer.state.global_step})


class LossTrackingTrainer(Trainer):
    """Trainer with the loss both trainers share (training/loss.py), which also sums the training loss
    between evaluations (as a tensor: no sync per step), and evaluates in dataset order."""

    epoch_loss_sum = None
    epoch_loss_count = 0
    loss_fn = None  # training.loss.loss_function(class weights, multi-label)
    multi_label = False
    # The loss is a batch mean, as in the native loop: Trainer divides it by the accumulation steps.
    # (Left to itself it would take it as already scaled, because the model's forward takes **kwargs.)
    loss_is_scaled_for_ga = False

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        # validation loss unweighted, as the native loop reports it (metrics.example_losses)
        loss = (self.loss_fn if model.training else loss_function(None, self.multi_label))(outputs.logits, labels)
        if model.training:
            detached = loss.detach().float()
            self.epoch_loss_sum = detached if self.epoch_loss_sum is None else self.epoch_loss_sum + detached
            self.epoch_loss_count += 1
        return (loss, outputs) if return_outputs else loss

    lengths = None  # the training rows' token counts, a NumPy array from the Arrow column

    def _get_train_sampler(self, train_dataset=None):
        """The native loop's length grouping, on the lengths as a NumPy array: Trainer's own sampler would
        read them one row at a time through datasets' Column (minutes on a million rows), then hold every
        index as a Python int."""
        if self.args.train_sampling_strategy != "group_by_length" or self.lengths is None:
            return super()._get_train_sampler(train_dataset)
        return LengthGroupedSampler(self.lengths, self.args.train_batch_size)

    def _get_eval_sampler(self, eval_dataset):
        """Dataset order, also when training groups by length (Trainer then shuffles evaluation too):
        predictions must line up with the texts for errors.tsv."""
        if self.args.world_size <= 1:
            return torch.utils.data.SequentialSampler(eval_dataset)
        return None  # accelerate shards in order and gathers back in order

    def pop_epoch_loss(self):
        """Mean training loss since the last call, averaged over all processes."""
        if self.epoch_loss_sum is None:
            return float("nan")
        totals = torch.stack([self.epoch_loss_sum, torch.tensor(float(self.epoch_loss_count),
                                                                device=self.epoch_loss_sum.device)])
        totals = self.accelerator.reduce(totals, reduction="sum")
        self.epoch_loss_sum, self.epoch_loss_count = None, 0
        return (totals[0] / totals[1]).item()


class RecorderCallback(TrainerCallback):
    """Hands Trainer's evaluations to the EvaluationRecorder both trainers share, and turns Ctrl-C
    into a saved state. History rows also go into Trainer's log_history, which its checkpoints save,
    so --resume gets them back."""

    def __init__(self, recorder, stop):
        self.recorder = recorder
        self.stop = stop
        self.trainer = None
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

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
        valid = {key[len("eval_"):]: value for key, value in metrics.items() if key.startswith("eval_")}
        valid["multi_label"] = self.trainer.multi_label  # the score titles of the printed line
        # per epoch: the epoch this evaluation ends (one cut short by --max_steps counts as one)
        epoch = round(state.epoch, 4) if self.recorder.by_steps else math.ceil(state.epoch - 1e-6)
        row = self.recorder.record(model, epoch, state.global_step, self.trainer.pop_epoch_loss(),
                                   valid, self.trainer.lr_scheduler.get_last_lr()[0],
                                   time.time() - self.epoch_started)
        state.log_history.append({"history_row": row, "step": state.global_step})
        self.epoch_started = time.time()
        if self.recorder.stalled():
            control.should_training_stop = True


if __name__ == "__main__":
    exit_on_user_error(main)
