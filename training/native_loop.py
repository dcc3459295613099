"""The hand-written training loop (finetune_plm_native.py, distill_plm.py): AdamW with linear warm-up and
decay, gradient accumulation, mixed precision, DDP under torchrun, evaluation with early stopping,
resumable states, then the best weights evaluated on validation and test and the run saved.

The trainers differ only in the loss of a batch: `loss_fn(logits, **targets)`, where targets are the
batch's `labels` and whatever else the training rows carry for the loss (data_load.collator.TARGETS:
a teacher's logits when distilling)."""
import contextlib
import sys
import time

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm
from transformers import get_linear_schedule_with_warmup

from checkpoint.run_dir import partial_dir, resume_dir, start_run
from checkpoint.train_state import load_train_state, restore, save_train_state, snapshot
from data_load import LengthGroupedBatchSampler, TextClassificationCollator, column_numpy, model_inputs
from data_load.collator import TARGETS
from training.evaluation import FIT_TEMPERATURE, all_logits, evaluation
from training.finish import save_run
from training.few_shot import pairs_first
from training.prepare import print_plan
from training.recorder import LOG_EVERY, EvaluationRecorder, load_best_weights, open_trackers
from utils.log import log
from utils.runtime import StopRequest, autocast_context, init_process_group, pad_to_multiple_of


def train(options, run, trainer_name, loss_fn, plan_notes=(), record=None):
    """Train run.model on run.train_set with loss_fn, then save the run (training.finish.save_run) with
    `record` added to its training_args.json; options: the run's TrainingOptions (options.training_flags);
    plan_notes: lines added to the printed plan."""
    context, device, precision, model, schedule = run.context, run.device, run.precision, run.model, run.schedule
    # the schedule flags as used (run.settings: --few_shot's recipe may have set some, training.few_shot)
    settings, eval_options, run_options = run.settings, options.evaluation, options.run
    model_fn, accumulation = run_options.model_fn, settings.gradient_accumulation_steps

    init_process_group(context, device)
    pairs_first(run, run_options.resume)  # the few-shot recipe's pair phase, where it applies
    model.to(device)
    if context.enabled:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    collate = TextClassificationCollator(run.tokenizer, pad_to_multiple_of=pad_to_multiple_of(precision),
                                         num_labels=len(run.splits.labels))
    autocast = autocast_context(device, precision)
    sampler = LengthGroupedBatchSampler(column_numpy(run.train_set, "length"), settings.batch_size,
                                        seed=settings.seed, group_by_length=settings.group_by_length,
                                        world_size=context.world_size, rank=context.rank)
    train_loader = DataLoader(model_inputs(run.train_set), batch_sampler=sampler, collate_fn=collate,
                              pin_memory=device.type == "cuda")
    assert len(train_loader) == schedule.batches_per_epoch

    optimizer, scheduler, scaler = optimization(model, run, settings.weight_decay)

    progress = {"epoch": 0, "batches_done": 0, "step": 0, "loss_sum": 0.0, "loss_count": 0, "history": []}
    if run_options.resume:
        progress = restore(load_train_state(resume_dir(model_fn)), model, optimizer, scheduler, scaler)
    partial = start_run(model_fn, run.fingerprint) if context.is_main else partial_dir(model_fn)
    context.barrier()
    recorder = EvaluationRecorder(open_trackers(options, trainer_name, context.is_main), partial, eval_options.best_metric,
                                  context.is_main, by_steps=bool(eval_options.eval_steps),
                                  patience=eval_options.early_stopping_patience,
                                  keep_last=run.keep_last_weights)
    recorder.restore(progress["history"])
    # The training loss since the last evaluation stays on the device: reading it (.item()) waits for
    # the GPU, so it is read only every LOG_EVERY steps and at each evaluation.
    loss_sum = torch.tensor(progress["loss_sum"], device=device)
    started = time.time()

    def evaluate_and_record(epoch):
        """Validation, the history row and best weights (rank 0); True when early stopping says stop."""
        nonlocal started
        valid = evaluate(model, run.valid_set, collate, settings.batch_size * 2, device, autocast, context,
                         run.splits.labels, threshold_per_label=eval_options.threshold_per_label, run=run)
        loss_sums = context.gather((loss_sum.item(), progress["loss_count"]))
        train_loss = sum(s for s, _ in loss_sums) / max(sum(n for _, n in loss_sums), 1)
        if context.is_main:
            recorder.record(model, epoch, progress["step"], train_loss, valid["metrics"],
                            scheduler.get_last_lr()[0], time.time() - started)
        loss_sum.zero_()
        progress["loss_count"] = 0
        started = time.time()
        return any(context.gather(recorder.stalled() if context.is_main else False))

    def save_state():
        if context.is_main:
            progress.update(loss_sum=loss_sum.item(), history=recorder.history)
            save_train_state(resume_dir(model_fn), progress["step"],
                             snapshot(progress, model, optimizer, scheduler, scaler), run_options.save_total_limit)

    print_plan(run, options, trainer_name, plan_notes)
    stop = StopRequest(context)
    stopped_early = recorder.stalled()  # a resumed run that had already stopped early trains no further
    for epoch in range(progress["epoch"], schedule.n_epochs):
        if stopped_early:
            break
        sampler.set_epoch(epoch)
        model.train()
        batches = tqdm(train_loader, desc=f"epoch {epoch + 1}/{schedule.n_epochs}", disable=not context.is_main,
                       initial=progress["batches_done"], total=len(train_loader), dynamic_ncols=True)
        for i, batch in enumerate(batches):
            if i < progress["batches_done"]:  # resuming mid-epoch: same order, skip what was done
                continue
            if progress["step"] == schedule.total_steps:  # --max_steps reached within this epoch
                break
            boundary = (i + 1) % accumulation == 0 or i + 1 == len(train_loader)
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            targets = {name: batch.pop(name) for name in TARGETS if name in batch}
            with maybe_no_sync(model, not boundary), autocast:
                loss = loss_fn(model(**batch).logits, **targets)
            # the mean over the accumulation group, also for a short last group of the epoch (as Trainer does)
            group = min(accumulation, len(train_loader) - i // accumulation * accumulation)
            scaler.scale(loss / group).backward()
            loss_sum += loss.detach()
            progress["loss_count"] += 1
            if not boundary:
                continue
            optimizer_step(model, optimizer, scheduler, scaler, settings.max_grad_norm)
            progress["step"] += 1
            progress["batches_done"] = i + 1
            if progress["step"] % LOG_EVERY == 0:
                step_loss = loss.item()  # the one host-device sync of a logging interval
                batches.set_postfix(loss=f"{step_loss:.4f}")
                recorder.log_step(progress["step"], step_loss, scheduler.get_last_lr()[0])
            if eval_options.eval_steps and (progress["step"] % eval_options.eval_steps == 0
                                          or progress["step"] == schedule.total_steps):
                stopped_early = evaluate_and_record(round(epoch + (i + 1) / len(train_loader), 4))
                model.train()
                if not run_options.save_every:  # every evaluation's history row (and best weights) survive a crash
                    save_state()
            if run_options.save_every and progress["step"] % run_options.save_every == 0:
                save_state()
            if stop.agreed():
                save_state()
                recorder.close("KILLED")
                if context.is_main:
                    log.info("interrupted: state saved; continue with --resume")
                sys.exit(130)
            if stopped_early:
                break

        if not eval_options.eval_steps:
            stopped_early = evaluate_and_record(epoch + 1)
        progress.update(epoch=epoch + 1, batches_done=0)
        if not run_options.save_every or epoch + 1 == schedule.n_epochs or stopped_early:
            save_state()

    # The best epoch's weights, evaluated once more on validation and once on test, then the run saved.
    load_best_weights(model, partial, context)  # every process evaluates its shard with rank 0's best weights
    valid, test = final_evaluations(model, run, collate, settings.batch_size * 2, autocast, eval_options)
    recorder.finish(valid, test, progress["step"])  # the final scores; TensorBoard's files closed before the save
    if context.is_main:
        save_run(options, trainer_name, run, model, recorder.history, valid, test,
                 extra={"optimizer_steps": progress["step"], **(record or {})})
    recorder.close()  # MLflow's and W&B's runs end once the model is saved
    context.barrier()


def optimization(model, run, weight_decay):
    """AdamW (fused, as Trainer's default) without weight decay on biases and LayerNorm; linear warm-up,
    then linear decay; a gradient scaler for fp16 (bf16 needs no loss scaling)."""
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW([
        {"params": [p for n, p in trainable if not no_decay(p)], "weight_decay": weight_decay},
        {"params": [p for n, p in trainable if no_decay(p)], "weight_decay": 0.0},
    ], lr=run.lr, fused=True)  # one kernel for all parameters, not a pass per tensor (docs/benchmarks.md: the step's share)
    scheduler = get_linear_schedule_with_warmup(optimizer, run.schedule.warmup_steps, run.schedule.total_steps)
    scaler = torch.amp.GradScaler(run.device.type, enabled=run.precision == "fp16")
    return optimizer, scheduler, scaler


def optimizer_step(model, optimizer, scheduler, scaler, max_grad_norm):
    """One update from the accumulated gradients: clipped (the true gradients, not the scaled ones), the
    step taken (skipped by the scaler on an fp16 overflow), the schedule advanced, the gradients cleared."""
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def final_evaluations(model, run, collate, batch_size, autocast, eval_options):
    """Validation and test of the weights to save. --calibrate: the temperature is fitted on validation;
    multi-label: the test set is scored at the decision threshold tuned on validation (after the
    temperature, on the probabilities the model will print)."""
    context, device = run.context, run.device
    valid = evaluate(model, run.valid_set, collate, batch_size, device, autocast, context, run.splits.labels,
                     threshold_per_label=eval_options.threshold_per_label, run=run,
                     temperature=FIT_TEMPERATURE if eval_options.calibrate else None)
    threshold, temperature = context.gather(valid and (valid["metrics"].get("threshold"),
                                                       valid["metrics"].get("temperature")))[0]
    test = evaluate(model, run.test_set, collate, batch_size, device, autocast, context, run.splits.labels,
                    threshold, run=run, temperature=temperature)
    return valid, test

def evaluate(model, dataset, collate, batch_size, device, autocast, context, label_names, threshold=None,
             threshold_per_label=False, run=None, temperature=None):
    """Logits for the whole dataset (sliding windows pooled per text), each process taking a shard;
    gathered and scored on rank 0."""
    if dataset is None:
        return None
    logits = all_logits(model, dataset, collate, batch_size, device, autocast, context, run.window_pooling)
    if not context.is_main:
        return None
    return evaluation(logits, dataset, label_names, threshold, threshold_per_label, run.regression_scale,
                      temperature=temperature)


def no_decay(parameter):
    """Biases and LayerNorm weights (the 1-D parameters) get no weight decay, as in Trainer."""
    return parameter.ndim < 2


def maybe_no_sync(model, skip_sync):
    """Under DDP, accumulate gradients locally until the last micro-batch of an optimizer step."""
    return model.no_sync() if skip_sync and isinstance(model, DistributedDataParallel) else contextlib.nullcontext()
