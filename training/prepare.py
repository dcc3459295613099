"""Set-up every training run shares: device and precision, data, tokenizer, model, schedule; and the
summary of what the run is about to do. Every bad input or flag fails here, before anything is written."""
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from checkpoint.lora import add_lora, trained_share
from checkpoint.pretrained import load_pretrained_model, load_tokenizer
from checkpoint.resume import check_resume_matches, run_fingerprint
from checkpoint.run_dir import check_inputs_kept, check_output, lock_output
from data_load import Splits, encode_splits, load_splits
from data_load.dataset import window_rows
from data_load.lengths import clamp_max_length, model_max_length
from data_load.long_text import check_stride, default_stride
from data_load.vocabulary import UNK_WARN_SHARE, check_vocabulary, extend_vocabulary
from scoring.metrics import best_metric_problem
from training.few_shot import few_shot_schedule, is_few_shot, keeps_last_weights, with_pair_phase
from training.loss import class_weights, label_log_odds, target_scale
from utils.errors import UserError
from utils.hub import resolve_model_name
from utils.log import log, setup_logging
from utils.runtime import DistributedContext, choose_device, choose_precision, distributed_context, set_seed


@dataclass
class Schedule:
    """Optimizer steps, computed the way Trainer computes them (so both trainers agree)."""
    batches_per_epoch: int  # per process
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    n_epochs: int  # epochs started: --n_epochs, or as many as --max_steps reaches into


@dataclass(kw_only=True)
class Prepared:
    """What a trainer needs before its loop, including the settings resolved from defaults. Built by keyword
    only: twenty fields, several of the same type, are too many to get right by position."""
    context: DistributedContext
    device: torch.device
    precision: str
    splits: Splits
    tokenizer: object
    model: torch.nn.Module
    model_name: str  # --pretrained_model_name resolved to a path or hub id
    lr: float  # --lr, or the default for this model's width
    max_length: int  # --max_length clamped to what the model allows
    schedule: Schedule
    train_set: object  # datasets.Dataset: the parsed columns, input_ids, token_type_ids, length, labels
    valid_set: object
    test_set: object | None
    fingerprint: dict  # what a --resume of this run must share with it
    class_weights: np.ndarray | None  # --class_weight resolved, in class-id order
    settings: object = None  # ScheduleOptions as used: the flags', with the few-shot recipe where it applies
    few_shot: dict | None = None  # the flags the few-shot recipe set ({flag: value}); None: it did not apply
    keep_last_weights: bool = False  # the last evaluation's weights, not the best's (training.few_shot)
    long_text: str = "truncate"  # --long_text as used (sentence pairs: truncate)
    stride: int | None = None  # sliding: --stride resolved
    window_pooling: str = "mean"
    n_train_texts: int = 0  # sliding: the training texts, which became len(train_set) windows
    regression_scale: tuple | None = None  # --regression: (mean, std) of the training targets
    text_of_window: np.ndarray | None = None  # sliding: the training text (a row of splits.train) of each window

    def resolved_settings(self):
        """Flags as actually used, for training_args.json (checkpoint.saved_model.SavedModel reads them)."""
        return {"pretrained_model_name": self.model_name, "lr": self.lr, "max_length": self.max_length,
                "long_text": self.long_text, "stride": self.stride, "window_pooling": self.window_pooling,
                "regression": self.regression_scale is not None, "few_shot_recipe": self.few_shot is not None,
                **(self.few_shot or {}),
                **({"target_mean": self.regression_scale[0], "target_std": self.regression_scale[1]}
                   if self.regression_scale else {})}


# LoRA's default rate against full fine-tuning's: on emotion (4,000 rows, 2 epochs, MiniLM, r 16, seed 0) 5x (1e-3,
# peft's examples' rate) scored 3.8 (native) and 6.2 (hf) points below full fine-tuning, 10x (2e-3) 0.05 and 2.0
# below (bench/lora.py; docs/accuracy.md has a second seed)
LORA_LR_FACTOR = 10

def default_learning_rate(model, lora=False):
    """Small models fine-tune best with a larger step than the 2e-5..5e-5 that suits BERT-base:
    on emotion, MiniLM-L6 reached 76% after 90 steps at 2e-4 against 66% at 1e-4. LoRA: LORA_LR_FACTOR x
    that (2e-3 for MiniLM), since low-rank updates that start at zero need larger steps to go as far;
    bench/lora.py measures it against full fine-tuning."""
    full = 2e-4 if getattr(model.config, "hidden_size", 768) <= 512 else 5e-5
    return full * LORA_LR_FACTOR if lora else full


def prepare(options, trainer_name):
    """options: the run's TrainingOptions (options.training_flags); its data options say whose classes the
    model must have, when they are given (distillation: the teacher's)."""
    data, model_options, schedule, run_options = options.data, options.model, options.schedule, options.run
    if options.cross_validation.cv is not None:
        from training.trial import become_fold
        become_fold()
    context = distributed_context()
    setup_logging(context.rank)  # the other processes of a distributed run: errors only
    device = choose_device(run_options.device, context.local_rank)
    precision = choose_precision(run_options.precision, device)
    check_inputs_kept(run_options.model_fn, {f"--{flag}": options.record.get(flag) for flag in (
        "pretrained_model_name", "train_fn", "valid_fn", "test_fn", "label_names_fn", "hp_space")})
    if context.is_main:
        lock_output(run_options.model_fn)
    check_output(run_options.model_fn, run_options.resume)
    log_dir = run_options.log_dir
    if log_dir and Path(log_dir).exists() and not Path(log_dir).is_dir():
        raise UserError(f"--log_dir {log_dir}: is a file, not a directory: choose a directory for TensorBoard")
    set_seed(schedule.seed)
    splits = load_splits(data)
    weights = (class_weights(schedule.class_weight, splits.labels, splits.train_label_ids(), len(splits.train),
                             splits.multi_label) if schedule.class_weight not in (None, "", "none") else None)
    # head_tail is the default: pairs truncate without a word
    if splits.has_pairs and model_options.long_text == "sliding":
        log.info("note: --long_text sliding is for single texts; sentence pairs are truncated (longest first)")
    # a regression run's --best_metric was checked with the flags (options.training_flags); whether a
    # classifier is multi-label only the data says
    problem = not splits.regression and best_metric_problem(options.evaluation.best_metric,
                                                            multi_label=splits.multi_label)
    if problem:
        raise UserError(problem)
    settings, few_shot = schedule, None
    single_label = not (splits.regression or splits.multi_label)
    # distill_plm.py trains on its unlabelled text as well: its labelled rows are few by design, its steps are not
    if trainer_name != "distill" and is_few_shot(schedule.few_shot, len(splits.train), len(splits.labels),
                                                 single_label=single_label):
        settings, few_shot = few_shot_schedule(schedule, len(splits.train), schedule_defaults())
        # the pair phase trains the whole encoder on class-labelled pairs: not for LoRA or a frozen encoder
        if schedule.few_shot_pairs and single_label and not model_options.lora_r and not model_options.freeze_encoder:
            settings, few_shot = with_pair_phase(settings, few_shot, schedule.few_shot_pairs)
    fingerprint = run_fingerprint(options.record, trainer_name, splits.labels, context.world_size, splits.digests())
    if run_options.resume:
        check_resume_matches(run_options.model_fn, fingerprint)
    model_name = resolve_model_name(model_options.pretrained_model_name)
    tokenizer = load_tokenizer(model_name)
    model = load_pretrained_model(model_name, splits.labels, model_options.freeze_encoder, splits.multi_label,
                            label_log_odds(splits.train_label_ids(), len(splits.labels), len(splits.train), weights)
                            if splits.multi_label else None, regression=splits.regression)
    extend_vocab = model_options.extend_vocab
    unknown_share = check_vocabulary(tokenizer, list(splits.train.texts(limit=2000, pairs=False)), extend_vocab)
    added = 0
    if extend_vocab == "yes" or (extend_vocab == "auto" and unknown_share > UNK_WARN_SHARE):
        added = extend_vocabulary(tokenizer, model, splits.train.texts())
        log.info(f"--extend_vocab {extend_vocab}: {unknown_share:.1%} of the training words were unknown; "
                 f"added {added} characters to the vocabulary")
    lr = settings.lr if settings.lr is not None else default_learning_rate(model, lora=bool(model_options.lora_r))
    if model_options.lora_r:
        model = add_lora(model, model_options, train_embeddings=added > 0)
    max_length = clamp_max_length(model_options.max_length, model_max_length(model, tokenizer))
    long_text = "truncate" if splits.has_pairs else model_options.long_text
    stride = None
    if long_text == "sliding":
        stride = model_options.stride if model_options.stride is not None else default_stride(max_length)
    stride_error = check_stride(stride, max_length, tokenizer.num_special_tokens_to_add(pair=False))
    if stride_error:
        raise UserError(stride_error)
    # One process per machine tokenizes; the others wait on the cache entry's lock, then read it.
    train_set, valid_set, test_set = encode_splits(splits, tokenizer, max_length,
                                                   run_options.preprocessing_num_workers, data.cache_dir, long_text,
                                                   stride)
    n_train_texts = len(train_set)
    train_set, text_of_window = window_rows(train_set)  # sliding: every window an example with its text's label
    return Prepared(
        context=context, device=device, precision=precision, splits=splits, tokenizer=tokenizer, model=model,
        model_name=model_name, lr=lr, max_length=max_length,
        schedule=training_schedule(len(train_set), settings, context.world_size), train_set=train_set,
        settings=settings, few_shot=few_shot, keep_last_weights=keeps_last_weights(few_shot, len(valid_set)),
        valid_set=valid_set, test_set=test_set, fingerprint=fingerprint, class_weights=weights,
        long_text=long_text, stride=stride, window_pooling=model_options.window_pooling,
        n_train_texts=n_train_texts,
        regression_scale=target_scale(splits.train_targets()) if splits.regression else None,
        text_of_window=text_of_window)


def schedule_defaults():
    """The parser's defaults of the schedule flags (the few-shot recipe changes only flags left at them)."""
    from options.training_flags import training_parser
    parser = training_parser("")
    return {name: parser.get_default(name) for name in ("n_epochs", "batch_size", "warmup_ratio")}


def training_schedule(n_train, options, world_size):
    """options: ScheduleOptions. --max_steps, when given, replaces --n_epochs (as in TrainingArguments): the
    schedule spans it."""
    batches = math.ceil(math.ceil(n_train / options.batch_size) / world_size)
    steps_per_epoch = math.ceil(batches / options.gradient_accumulation_steps)
    total = options.max_steps or steps_per_epoch * options.n_epochs
    return Schedule(batches, steps_per_epoch, total, math.ceil(total * options.warmup_ratio),
                    math.ceil(total / steps_per_epoch))


def print_plan(run, options, trainer_name, notes=()):
    """What the run is about to do, once, before the first step (as run_glue_no_trainer.py does);
    `notes`: lines of the trainer's own (distillation: the teacher, the student, the temperature)."""
    if not run.context.is_main:
        return
    splits, schedule, world = run.splits, run.schedule, run.context.world_size
    flags, evaluation = run.settings, options.evaluation
    labels = ", ".join(splits.labels[:10]) + (f", ... ({len(splits.labels)} in all)" if len(splits.labels) > 10 else "")
    lr_note = "" if flags.lr is not None else f" (default for hidden size {run.model.config.hidden_size})"
    n_trainable, n_all = trained_share(run.model)
    lora = options.model.lora_r and run.model.peft_config["default"]
    lora_line = ([f"  LoRA: rank {lora.r}, alpha {lora.lora_alpha:g}, dropout {lora.lora_dropout:g} on "
                  f"{', '.join(sorted(lora.target_modules))}; trained in full: {', '.join(sorted(set(lora.modules_to_save)))} "
                  f"({n_trainable / n_all:.2%} of the parameters train)"] if lora else [])
    lines = [
        f"***** Running training ({trainer_name}) *****",
        f"  model = {run.model_name} ({run.model.config.model_type}, {n_trainable / 1e6:.1f}M trainable parameters)",
        *lora_line,
        f"  examples: train = {len(splits.train)}, valid = {len(splits.valid)}, "
        f"test = {len(splits.test) if splits.test else 0}" + (" (sentence pairs)" if splits.has_pairs else ""),
        (f"  regression: targets mean {run.regression_scale[0]:.4g}, standard deviation {run.regression_scale[1]:.4g} "
         "(standardised for the loss)" if run.regression_scale else
         f"  labels = {len(splits.labels)}{' (multi-label)' if splits.multi_label else ''}: {labels}"),
        f"  max length = {run.max_length} tokens" + long_text_note(run),
        f"  epochs = {schedule.n_epochs}" + (f" (--max_steps {flags.max_steps})" if flags.max_steps else ""),
        *([f"  few-shot recipe ({len(splits.train)} training examples, --few_shot {flags.few_shot}): "
           + ", ".join(f"--{name} {value}" for name, value in run.few_shot.items())]
          if run.few_shot is not None else []),
        *([f"  weights kept: the last epoch's ({len(run.valid_set)} validation examples are too few to choose an "
           f"epoch by; --valid_fn with more lets the best epoch be chosen)"] if run.keep_last_weights else []),
        f"  batch size per device = {flags.batch_size}, gradient accumulation = {flags.gradient_accumulation_steps}, "
        f"total batch size = {flags.batch_size * flags.gradient_accumulation_steps * world}",
        f"  optimizer steps = {schedule.total_steps} ({schedule.steps_per_epoch} per epoch), "
        f"warm-up steps = {schedule.warmup_steps}",
        f"  learning rate = {run.lr:g}{lr_note}",
        (f"  evaluation = every {evaluation.eval_steps} steps" if evaluation.eval_steps
         else "  evaluation = after each epoch"),
        *([f"  early stopping after {evaluation.early_stopping_patience} evaluations without a better "
           f"{evaluation.best_metric}"] if evaluation.early_stopping_patience else []),
        *([f"  class weights ({flags.class_weight}) = " + ", ".join(
            f"{label} {weight:.3g}" for label, weight in list(zip(splits.labels, run.class_weights))[:20])]
          if run.class_weights is not None else []),
        f"  precision = {run.precision}, device = {run.device}, world size = {world}",
        *notes,
    ]
    log.info("\n".join(lines))


def long_text_note(run):
    """How texts longer than max length are handled, and (sliding) how many windows the texts became."""
    if run.long_text == "head_tail":
        return "; longer texts: head + tail (--long_text head_tail)"
    if run.long_text == "sliding":
        return (f"; longer texts: sliding windows, stride {run.stride}, {run.window_pooling} pooling: "
                f"{run.n_train_texts:,} training texts became {len(run.train_set):,} windows")
    return ""
