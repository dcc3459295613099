"""Command-line flags both trainers share, defined once so names and defaults cannot drift; and the typed,
frozen options an entry point builds from them once (training_options), which are what the layers below
read instead of the parsed namespace."""
import argparse
import dataclasses
from dataclasses import dataclass

from data_load.long_text import check_stride
from data_load.readers import Labeling
from data_load.splits import DataOptions
from data_load.tokens import MIN_LENGTH
from options.parser import (ArgumentParser, add_cache_flag, add_column_flags, add_delimiter_flag, add_long_text_flags,
                            add_model_flag, add_runtime_flags, float_above, float_at_least, float_range, int_at_least)
from scoring.metrics import ALL_SCORES, DEFAULT_BEST_METRIC, best_metric_problem
from scoring.trackers import DEFAULT_REPORT_TO, TRACKERS, check_trackers, report_to
from utils.errors import UserError
from utils.hub import DEFAULT_MODEL_HELP


# Off unless --calibrate: measured on 4,000 training rows (docs/accuracy.md, bench/calibration.py), MiniLM
# fine-tuned with the defaults is already close to calibrated (test ECE: emotion 0.022, GoEmotions 0.010), and a
# temperature fitted on the 400 validation rows halved GoEmotions' (0.005) but not emotion's (0.025): a gain too
# small and uneven to change every model's probabilities by default.
CALIBRATE_BY_DEFAULT = False

CLASS_WEIGHT_HELP = ("weight each class's loss: `balanced` (n_examples / (n_classes * n_examples_of_class), as "
                     "scikit-learn; multi-label: negatives / positives of each label, BCE's pos_weight), weights in label order (`1,2.5,1`) or by name (`neg=1,pos=3`, the rest 1); "
                     "default: none")


# --hp_search: the flags a search space may set (how the model trains, not what it reads: every trial
# is scored on the same validation inputs, and the test set is encoded once), and the default space,
# lr as factors of --lr (default: by model width). training/hp_search.py searches them.
SEARCHABLE = ("lr", "n_epochs", "max_steps", "batch_size", "gradient_accumulation_steps", "weight_decay",
              "warmup_ratio", "max_grad_norm", "early_stopping_patience", "lora_r")
DEFAULT_SPACE = {"lr": {"low": 0.25, "high": 2.0, "log": True}, "n_epochs": {"low": 2, "high": 5},
                 "batch_size": {"choices": [16, 32, 64]}, "warmup_ratio": {"low": 0.0, "high": 0.2},
                 "weight_decay": {"low": 0.0, "high": 0.1}}


class TrainingArgumentParser(ArgumentParser):
    def parse_args(self, args=None, namespace=None):
        parsed = super().parse_args(args, namespace)
        # which training data (--train_fn, --dataset_name, --dataset_config_name): DataOptions checks it once,
        # when training_options builds it from these flags
        if parsed.regression:
            for flag, given in (("--multi_label", parsed.multi_label), ("--label_columns", parsed.label_columns),
                                ("--label_names_fn", parsed.label_names_fn),
                                ("--class_weight", parsed.class_weight not in (None, "", "none"))):
                if given:
                    self.error(f"{flag} is for classes; --regression predicts one number a row: drop one of them")
            # a regression run's metric is known wrong from the flags; a classifier's only once the data says
            # whether it is multi-label (training.prepare): the same check, each part where it can be made
            problem = parsed.best_metric is not None and best_metric_problem(parsed.best_metric, regression=True)
            if problem:
                self.error(problem)
        if parsed.calibrate is None:
            parsed.calibrate = CALIBRATE_BY_DEFAULT and not parsed.regression
        elif parsed.calibrate and parsed.regression:
            self.error("--calibrate scales class probabilities; --regression predicts a number: drop one of them")
        if parsed.best_metric is None:
            parsed.best_metric = "spearman" if parsed.regression else DEFAULT_BEST_METRIC
        stride_error = check_stride(parsed.stride, parsed.max_length)
        if stride_error:
            self.error(stride_error)
        lora_flags = [f"--{name}" for name in ("lora_alpha", "lora_dropout", "lora_target_modules")
                      if getattr(parsed, name) is not None]
        if lora_flags and parsed.lora_r is None:
            self.error(f"{', '.join(lora_flags)}: LoRA is off; add --lora_r R (e.g. 8) to train adapters, or drop them")
        if parsed.lora_r is not None and parsed.freeze_encoder:
            self.error("--freeze_encoder trains the head alone, --lora_r adapters and the head: drop one of them")
        if parsed.lora_target_modules is not None and not [name for name in parsed.lora_target_modules.split(",")
                                                           if name.strip()]:
            self.error("--lora_target_modules: no layer names; give them comma-separated, e.g. query,value")
        cv_problem = cross_validation_problem(parsed)
        if cv_problem:
            self.error(cv_problem)
        if (parsed.hp_space or parsed.hp_storage) and not parsed.hp_search:
            self.error("--hp_space and --hp_storage are for a hyperparameter search: add --hp_search N")
        try:  # a tracker or the Hub's package missing: one line before anything runs
            check_trackers(parsed.report_to)
        except UserError as error:
            self.error(str(error))
        if parsed.hub_private and not parsed.push_to_hub:
            self.error("--hub_private is for a repository --push_to_hub creates: add --push_to_hub REPO_ID, or drop it")
        if parsed.threshold_per_label and not (parsed.multi_label or parsed.label_columns):
            self.error("--threshold_per_label: decision thresholds are for multi-label data; add --multi_label "
                       "(or --label_columns), or drop the flag")
        return parsed


def training_parser(description):
    """Every numeric flag is range-checked here, so a bad value is one line before anything loads."""
    p = TrainingArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_data_and_output_flags(p)
    add_model_flags(p)
    add_training_flags(p)
    add_reporting_flags(p)
    add_search_flags(p)
    add_cross_validation_flags(p)
    return p


def add_data_and_output_flags(p):
    io = p.add_argument_group("data and output")
    add_model_flag(io, "output directory for the fine-tuned model (replaced only by a complete new one)")
    io.add_argument("--train_fn",
                    help="training data: `label<TAB>sentence` lines, CSV/TSV with a header, JSONL, Parquet, or a "
                         "directory written by Dataset(Dict).save_to_disk (its validation/test splits are used "
                         "unless --valid_fn/--test_fn are given)")
    io.add_argument("--dataset_name", help="instead of --train_fn: a 🤗 hub dataset (e.g. dair-ai/emotion) or a local "
                                           "dataset directory, loaded with datasets.load_dataset; needs the hub")
    io.add_argument("--dataset_config_name", help="the configuration of --dataset_name (e.g. sst2 for glue)")
    io.add_argument("--valid_fn", help="validation data (same format); default: split off --valid_ratio of --train_fn")
    io.add_argument("--valid_ratio", type=float_range(0, 1, low_open=True, high_open=True), default=0.1,
                    help="share of --train_fn held out for validation (seeded, stratified) when --valid_fn is absent")
    io.add_argument("--test_fn", help="test data, evaluated once at the end with the best model")
    add_column_flags(io)
    add_delimiter_flag(io)
    io.add_argument("--regression", action="store_true",
                    help="the label is a number (a rating, a similarity score): one output trained with mean squared "
                         "error on targets standardised on the training set; scored by Pearson, Spearman, MSE and "
                         "MAE, the best epoch by Spearman")
    io.add_argument("--multi_label", action="store_true",
                    help="each example has any number of labels (a sigmoid per label, a decision threshold tuned "
                         "on validation): the label field holds them separated by --label_separator, or a JSON list")
    io.add_argument("--threshold_per_label", action="store_true",
                    help="with --multi_label: tune one decision threshold per label on validation instead of one for "
                         "all: better macro-F1, worse micro-F1 (GoEmotions: +0.011 and -0.012; docs/accuracy.md)")
    io.add_argument("--max_train_samples", type=int_at_least(1), default=None,
                    help="train on a seeded random subset of this many examples (quick runs)")
    io.add_argument("--max_eval_samples", type=int_at_least(1), default=None,
                    help="evaluate on a seeded random subset of this many validation (and test) examples")
    io.add_argument("--preprocessing_num_workers", type=int_at_least(1), default=None,
                    help="processes that tokenize the data (default: 1 below 50,000 examples, else one per "
                         "core, at most 8)")
    add_cache_flag(io)


def add_model_flags(p):
    model = p.add_argument_group("model")
    model.add_argument("--pretrained_model_name", default=None, help=DEFAULT_MODEL_HELP)
    model.add_argument("--max_length", type=int_at_least(MIN_LENGTH), default=128,
                       help="tokens per input (clamped to what the model allows); longer texts: see --long_text")
    add_long_text_flags(model)
    model.add_argument("--freeze_encoder", action="store_true",
                       help="train only the classification head; the encoder gets no gradient")
    model.add_argument("--extend_vocab", nargs="?", const="yes", choices=["no", "yes", "auto"], default="no",
                       help="add characters of the training data the tokenizer cannot represent "
                            "(e.g. Hangul for an English model) to its vocabulary; auto: only when more than "
                            "5%% of the training words are unknown to it")
    add_lora_flags(p)


def add_lora_flags(p):
    lora = p.add_argument_group("LoRA (low-rank adapters, with peft)")
    lora.add_argument("--lora_r", type=int_at_least(1), default=None, metavar="R",
                      help="train low-rank adapters of rank R on the encoder (LoRA, Hu et al. 2021) and the "
                           "classification head in full, instead of every weight; saves model.safetensors with the "
                           "adapter merged in (loads like any other model) and the adapter alone in adapter/. "
                           "Default: off")
    lora.add_argument("--lora_alpha", type=float_above(0), default=None,
                      help="LoRA scaling numerator (the update is scaled by alpha / r); default: 2 x --lora_r")
    lora.add_argument("--lora_dropout", type=float_range(0, 1, high_open=True), default=None,
                      help="dropout on the adapters' input; default: 0.1")
    lora.add_argument("--lora_target_modules", default=None, metavar="NAME,NAME",
                      help="comma-separated names of the linear layers that get adapters; default by model family: "
                           "query,value (BERT, RoBERTa, XLM-R, ELECTRA, ALBERT), q_lin,v_lin (DistilBERT)")


def add_training_flags(p):
    train = p.add_argument_group("training")
    train.add_argument("--n_epochs", type=int_at_least(1), default=3)
    train.add_argument("--max_steps", type=int_at_least(1), default=None,
                       help="stop after this many optimizer steps (overrides --n_epochs; the learning-rate "
                            "schedule spans these steps), as TrainingArguments.max_steps")
    train.add_argument("--batch_size", type=int_at_least(1), default=32, help="samples per step per device")
    train.add_argument("--few_shot", choices=["auto", "on", "off"], default="auto",
                       help="the recipe for a small training set: the encoder first trained on pairs of training "
                            "texts (--few_shot_pairs), then batches of 8 and enough epochs for about 200 optimizer "
                            "steps, in place of --batch_size and --n_epochs left at their defaults; auto: "
                            "for single-label data with at most 64 training examples per class (docs/accuracy.md, "
                            "Few labels)")
    train.add_argument("--few_shot_pairs", type=int_at_least(0), default=20,
                       help="with the few-shot recipe, single-label: first train the encoder on this many pairs "
                            "of each kind (same class, other class) per training example, SetFit's contrastive "
                            "phase; then a layer hands the mean of the tokens to the classifier, the head is fitted "
                            "alone and the whole model fine-tunes at --lr 5e-5 unless given (0: none of this)")
    train.add_argument("--gradient_accumulation_steps", type=int_at_least(1), default=1)
    train.add_argument("--lr", type=float_above(0), default=None,
                       help="peak learning rate (AdamW); default by model width: 2e-4 up to hidden size 512 "
                            "(MiniLM, small BERTs), 5e-5 above (BERT-base, KcBERT, RoBERTa); 10x that with --lora_r")
    train.add_argument("--weight_decay", type=float_at_least(0), default=0.01,
                       help="AdamW weight decay (not applied to biases and LayerNorm weights)")
    train.add_argument("--warmup_ratio", type=float_range(0, 1, high_open=True), default=0.1,
                       help="share of steps with linear warm-up, then linear decay to 0")
    train.add_argument("--max_grad_norm", type=float_above(0), default=1.0, help="gradient clipping norm")
    train.add_argument("--class_weight", default="none", help=CLASS_WEIGHT_HELP)
    add_runtime_flags(train)
    train.add_argument("--no_group_by_length", action="store_true",
                       help="do not batch sentences of similar length together (slower)")
    train.add_argument("--seed", type=int_at_least(0), default=42, help="seeds Python, NumPy, torch, splits and data order")


def add_reporting_flags(p):
    run = p.add_argument_group("reporting and checkpoints")
    run.add_argument("--best_metric", choices=list(ALL_SCORES), default=None,
                     help=f"validation metric that picks the epoch whose weights are saved (default: "
                          f"{DEFAULT_BEST_METRIC}; with --regression: spearman); loss and accuracy can prefer an early "
                          "epoch that predicts only the majority class")
    run.add_argument("--calibrate", action="store_true", default=None,
                     help="after training, fit a temperature on validation that makes the printed probabilities "
                          "honest (temperature scaling, Guo et al. 2017: the logits divided by one number, which "
                          "never changes the most probable class); stored in the model and applied by "
                          "classify_plm.py (both backends), evaluate_plm.py, export_plm.py and the server. Every "
                          "evaluation reports the expected calibration error (ECE) either way"
                          + ("; on by default" if CALIBRATE_BY_DEFAULT else ""))
    run.add_argument("--no_calibrate", dest="calibrate", action="store_false",
                     help="keep the probabilities as trained (no temperature)")
    run.add_argument("--eval_steps", type=int_at_least(1), default=None,
                     help="evaluate every N optimizer steps (and after the last) instead of after each epoch")
    run.add_argument("--early_stopping_patience", type=int_at_least(1), default=None,
                     help="stop when --best_metric has not improved for N evaluations in a row (default: never)")
    run.add_argument("--log_dir", help="TensorBoard directory (default: <model_fn>/runs)")
    run.add_argument("--report_to", type=report_to, default=DEFAULT_REPORT_TO, metavar="TRACKERS",
                     help=f"where each evaluation's scores, the training loss and the final scores go, under the same "
                          f"names from both trainers: {', '.join(TRACKERS)} (separated by commas), all, or none; each "
                          "run logs its flags too. mlflow and wandb: pip install -r requirements/tracking.txt; they "
                          "write where MLFLOW_TRACKING_URI / WANDB_MODE, WANDB_PROJECT say")
    run.add_argument("--n_errors", type=int_at_least(0), default=50,
                     help="highest-loss validation/test examples written to errors.tsv")
    run.add_argument("--save_every", type=int_at_least(0), default=0,
                     help="save a resumable state every N optimizer steps (0: once per epoch, or at every "
                          "evaluation with --eval_steps)")
    run.add_argument("--save_total_limit", type=int_at_least(1), default=2, help="resumable states kept")
    run.add_argument("--resume", action="store_true",
                     help="continue an interrupted run of the same --model_fn from its latest state")

    hub = p.add_argument_group("publishing")
    hub.add_argument("--push_to_hub", metavar="REPO_ID",
                     help="upload the finished model (with its model card) to this Hugging Face Hub repository "
                          "(NAME or USER/NAME); the token and the Hub are checked before anything starts")
    hub.add_argument("--hub_private", action="store_true",
                     help="with --push_to_hub: create the repository private (an existing one keeps its visibility)")


def add_search_flags(p):
    space = DEFAULT_SPACE
    search = p.add_argument_group("hyperparameter search (pip install -r requirements/search.txt)")
    search.add_argument("--hp_search", type=int_at_least(1), default=None, metavar="N",
                        help="run N trials with Optuna (TPE sampler seeded by --seed; a trial whose best --best_metric "
                             "so far is worse than the median of the finished trials at the same epoch, or step with "
                             "--eval_steps, is pruned) and save the best trial's model; the objective is --best_metric "
                             "on validation, --test_fn is scored once, with the winner. Default space: lr log-uniform "
                             f"from {space['lr']['low']:g}x to {space['lr']['high']:g}x --lr (default: by model width), "
                             f"n_epochs {space['n_epochs']['low']}-{space['n_epochs']['high']}, batch_size one of "
                             f"{', '.join(map(str, space['batch_size']['choices']))}, warmup_ratio "
                             f"{space['warmup_ratio']['low']:g}-{space['warmup_ratio']['high']:g}, weight_decay "
                             f"{space['weight_decay']['low']:g}-{space['weight_decay']['high']:g}; a flag given on "
                             "the command line is left out of it. --resume continues a killed search")
    search.add_argument("--hp_space", metavar="FILE.json",
                        help="replaces the default space: a JSON object naming flags (" + ", ".join(SEARCHABLE) +
                             ') as {"low": 1e-5, "high": 1e-4, "log": true}, {"choices": [16, 32]} or one value; '
                             '{"lora_r": {"choices": [4, 8, 16]}} searches the LoRA rank (each trial trains adapters)')
    search.add_argument("--hp_storage", metavar="URL",
                        help="the study in this Optuna RDB storage (e.g. postgresql://user@host/db) instead of SQLite "
                             "in the model directory: machines that run the same command share its trials, about N "
                             "in all, and each saves the best trial it ran itself")


def add_cross_validation_flags(p):
    cv = p.add_argument_group("cross-validation (label errors: find_label_errors.py)")
    cv.add_argument("--cv", type=int_at_least(2), default=None, metavar="K",
                    help="train K models on K seeded folds of the training data (stratified by label; multi-label: "
                         "iterative stratification), each with these flags, validated on --valid_fn or on "
                         "--valid_ratio of its own training folds; --model_fn gets every training row's out-of-fold "
                         "probabilities (oof_predictions.parquet, for find_label_errors.py) and each fold's scores "
                         "with their mean and standard deviation (cv_metrics.json). Each fold is a process of its "
                         "own: --resume after a kill runs only the unfinished folds")
    cv.add_argument("--cv_final", action="store_true",
                    help="with --cv: also train one model on all the training data (as without --cv) into "
                         "--model_fn, which --test_fn then scores")
    cv.add_argument("--cv_fold", type=int_at_least(0), default=None, metavar="k",
                    help="with --cv K: train only fold k (0..K-1) into --model_fn, e.g. on another machine; "
                         "copy its directory to <dir>/.<name>.partial/cv_folds/fold-k of the --cv run, which "
                         "--resume then counts as done (README, \"Better labels\")")


def cross_validation_problem(parsed):
    """What is wrong with the --cv flags as given, or None."""
    if parsed.cv is None:
        if parsed.cv_final or parsed.cv_fold is not None:
            return f"{'--cv_final' if parsed.cv_final else '--cv_fold'} is for cross-validation: add --cv K"
        return None
    if parsed.regression:
        return "--cv: out-of-fold probabilities are for classes; --regression predicts a number: drop one of them"
    if parsed.hp_search:
        return ("--cv and --hp_search: search first, then cross-validate with the values it found "
                "(training_args.json of its model)")
    if parsed.cv_fold is not None and parsed.cv_fold >= parsed.cv:
        return f"--cv_fold {parsed.cv_fold}: folds are numbered 0 to {parsed.cv - 1} with --cv {parsed.cv}"
    if parsed.push_to_hub and not parsed.cv_final:
        return ("--push_to_hub with --cv: only --cv_final trains a model to push (the folds' models are not kept); "
                "add --cv_final, or drop --push_to_hub")
    if parsed.cv_fold is not None and parsed.cv_final:
        return "--cv_fold trains one fold; --cv_final is for the --cv run that collects them: drop one of them"
    return None


def command_line(flags):
    """The trainers' command line (a list of arguments) that gives `flags` ({flag: value}, every trainer flag):
    each flag whose value is not its default, so that a subprocess of the same script (a search's trial, a
    fold of --cv) runs with every setting of its parent."""
    argv = []
    for action in training_parser("")._actions:
        if not action.option_strings or action.dest == "help":
            continue
        value = flags[action.dest]
        if isinstance(value, (tuple, list)):  # --report_to's trackers: as the flag's text, a,b
            value = ",".join(map(str, value))
        if value == action.default:
            continue
        flag = max(action.option_strings, key=len)
        if action.nargs == 0:  # a switch: given when it sets the value (--calibrate and --no_calibrate share one)
            argv += [flag] if value == action.const else []
        else:
            argv += [flag, str(value)]
    return argv


# The options: the trainers' flags as typed, frozen values, grouped by what reads them. An entry point
# builds them once (training_options) and hands them down; nothing below it sees the parsed namespace, and
# nothing changes them in place. A flag the entry point settles itself goes in through training_options, so
# that training_args.json records it; what is not a flag (DataOptions.classes) through dataclasses.replace.
# No defaults here: the parser's are the only ones, so the two cannot drift.

@dataclass(frozen=True)
class ModelOptions:
    """What the run starts from and how a text becomes the model's input (training.prepare)."""
    pretrained_model_name: str | None  # None: the default model (utils.hub)
    max_length: int
    long_text: str
    stride: int | None
    window_pooling: str
    freeze_encoder: bool
    extend_vocab: str
    lora_r: int | None  # None: every weight trains (checkpoint.lora)
    lora_alpha: float | None  # None: 2 x lora_r
    lora_dropout: float | None  # None: 0.1
    lora_target_modules: str | None  # comma-separated; None: by model family


@dataclass(frozen=True)
class ScheduleOptions:
    """The optimizer, its schedule and the batches (training.prepare.training_schedule, both loops)."""
    n_epochs: int
    max_steps: int | None  # replaces n_epochs
    batch_size: int
    gradient_accumulation_steps: int
    lr: float | None  # None: by model width (training.prepare.default_learning_rate)
    weight_decay: float
    warmup_ratio: float
    max_grad_norm: float
    class_weight: str | None
    few_shot: str  # auto, on, off (training.few_shot)
    few_shot_pairs: int  # the recipe's pair phase: pairs of each kind per example (training.few_shot.pair_phase)
    group_by_length: bool  # not --no_group_by_length
    seed: int


@dataclass(frozen=True)
class EvalOptions:
    """When the run evaluates, which evaluation's weights it keeps, and what its final evaluation fits and
    reports (both loops, training.recorder, training.finish)."""
    best_metric: str
    eval_steps: int | None  # None: after each epoch
    early_stopping_patience: int | None
    threshold_per_label: bool
    calibrate: bool
    n_errors: int


@dataclass(frozen=True)
class RunOptions:
    """Where the run writes, what it continues, and how this process runs it."""
    model_fn: str
    resume: bool
    log_dir: str | None
    save_every: int
    save_total_limit: int
    device: str
    precision: str
    preprocessing_num_workers: int | None
    report_to: tuple  # the trackers (scoring.trackers): () for none
    push_to_hub: str | None  # the Hub repository the saved model goes to (training.finish.publish)
    hub_private: bool


@dataclass(frozen=True)
class SearchOptions:
    """--hp_search (training.hp_search)."""
    hp_search: int | None  # the number of trials; None: no search
    hp_space: str | None
    hp_storage: str | None


@dataclass(frozen=True)
class CrossValidationOptions:
    """--cv (training.cross_validation); the folds themselves are data (DataOptions.folds, .fold)."""
    cv: int | None  # the number of folds; None: no cross-validation
    cv_fold: int | None  # the one fold this run trains
    cv_final: bool

    @property
    def collects_folds(self):
        """Whether this run is the --cv run that trains the folds (each a subprocess) and collects them."""
        return self.cv is not None and self.cv_fold is None


@dataclass(frozen=True)
class TrainingOptions:
    """Everything a training run is told, as the groups above. `flags` is every flag as the command line gave
    it (resolved by the entry point, e.g. distill_plm.py's student), as (name, value) pairs in the parser's
    order: not for reading settings (the groups are), but for what must keep the flags' own names and
    order, training_args.json (record) and --resume's fingerprint, and the command line of a search's
    trials."""
    data: DataOptions
    model: ModelOptions
    schedule: ScheduleOptions
    evaluation: EvalOptions
    run: RunOptions
    search: SearchOptions
    cross_validation: CrossValidationOptions
    flags: tuple

    @property
    def record(self):
        """The flags as a new dict, {name: value}, in the parser's order."""
        return dict(self.flags)


def training_options(args, **resolved):
    """The options of the parsed flags, built once by the entry point; `resolved`: flag values the entry
    point settles itself (distill_plm.py: the student's layers), recorded as if they had been given. The
    parsed namespace is read, never changed."""
    return options_from_flags({**vars(args), **resolved})


def options_from_flags(flags):
    """TrainingOptions from {flag: value} (every trainer flag; extra ones, such as distill_plm.py's, are
    kept in the record only)."""
    def pick(group, **renamed):
        names = [field.name for field in dataclasses.fields(group) if field.name not in renamed]
        return group(**{name: flags[name] for name in names}, **renamed)
    return TrainingOptions(
        data=data_options(flags), model=pick(ModelOptions),
        schedule=pick(ScheduleOptions, group_by_length=not flags["no_group_by_length"]),
        evaluation=pick(EvalOptions), run=pick(RunOptions), search=pick(SearchOptions),
        cross_validation=CrossValidationOptions(flags.get("cv"), flags.get("cv_fold"), bool(flags.get("cv_final"))),
        flags=tuple(flags.items()))


def data_options(flags):
    """The trainers' data flags ({flag: value}) as the typed values data_load takes."""
    labeling = Labeling.from_flags(flags["multi_label"], flags["label_separator"], flags["label_columns"],
                                   flags["label_names_fn"], flags["label_column"])
    return DataOptions(
        train_fn=flags["train_fn"], valid_fn=flags["valid_fn"], test_fn=flags["test_fn"],
        dataset_name=flags["dataset_name"], dataset_config_name=flags["dataset_config_name"],
        text_column=flags["text_column"], text_pair_column=flags["text_pair_column"],
        label_column=flags["label_column"],
        labeling=dataclasses.replace(labeling, numbers=bool(flags["regression"])),
        valid_ratio=flags["valid_ratio"], seed=flags["seed"], max_train_samples=flags["max_train_samples"],
        max_eval_samples=flags["max_eval_samples"], cache_dir=flags["cache_dir"],
        regression=bool(flags["regression"]), delimiter=flags["delimiter"], folds=flags.get("cv"),
        fold=flags.get("cv_fold"))


def flag_defaults():
    """{flag: default} of the trainers' flags: what a model card compares a run's record with."""
    return {action.dest: action.default for action in training_parser("")._actions
            if action.option_strings and action.dest != "help"}
