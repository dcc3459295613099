"""What a saved model is: the record a finished run writes beside its weights, read in one place by
every command that uses the model (classify in both backends, evaluate, export, the server).

A saved model is a `save_pretrained` directory, so `transformers.pipeline` loads it as it is:
  config.json (real id2label/label2id, problem_type), model.safetensors, tokenizer files,
  training_args.json (every flag, the labels, max length, pairs, thresholds, calibration temperature, versions),
  metrics.json, history.json, learning_curve.png, confusion_matrix.png, errors.tsv, runs/ (TensorBoard);
  after export_plm.py also model.onnx and model.int8.onnx.

`SavedModel.read` turns config.json and training_args.json into one typed record; a key a checkpoint
lacks (written before the key existed) takes the default defined here, once.

torch-free: the ONNX classifier and the server read records without torch; `load_checkpoint` imports
transformers only when it is called."""
import json
from dataclasses import dataclass, field
from pathlib import Path

from data_load.lengths import clamp_max_length, position_limit
from utils.errors import UserError, first_line
from utils.files import file_digest
from data_load.long_text import (RECORDED_LONG_TEXT, DEFAULT_POOLING, LONG_TEXT_CHOICES, POOLING_CHOICES, check_stride,
                             default_stride)

TRAINING_ARGS = "training_args.json"
WEIGHTS = "*.safetensors"
DEFAULT_MAX_LENGTH = 128  # --max_length's default in the trainers, for checkpoints that did not record it
DEFAULT_LABEL_SEPARATOR = ","  # joins a multi-label prediction's labels, as --label_separator splits them
DEFAULT_THRESHOLD = 0.5  # a multi-label model saved without a tuned threshold
MULTI_LABEL_PROBLEM = "multi_label_classification"  # config.problem_type: a sigmoid per label
REGRESSION_PROBLEM = "regression"  # config.problem_type: one output, the number itself
# training_args.json: the --calibrate temperature the logits are divided by (not distill_plm.py's --temperature,
# which is recorded as a flag like any other)
CALIBRATION_KEY = "calibration_temperature"


@dataclass(frozen=True)
class SavedModel:
    """What a classifier needs to know about a checkpoint beyond its weights."""
    path: Path
    labels: tuple  # class names in class-id order
    multi_label: bool  # a sigmoid per label; else a softmax over the labels
    threshold: object  # multi-label: a number for every label, or a tuple of one per label; else None
    label_separator: str  # between the labels of one multi-label example (reading files, printing predictions)
    max_length: int  # tokens per input as trained
    pairs: bool  # trained on sentence pairs
    position_limit: object  # longest input the position embeddings allow (None: unknown)
    label_columns: object = None  # multi-label flags the training data was read with (evaluate_plm.py reads alike)
    label_names_fn: object = None
    # texts longer than max_length, as trained (data_load.long_text; checkpoints from before: truncate)
    long_text: str = RECORDED_LONG_TEXT
    stride: object = None  # sliding: tokens consecutive windows share
    window_pooling: str = DEFAULT_POOLING
    # regression: one output in the label's units. The training targets' (mean, std), which the loss
    # standardised with, is kept for the record: the output layer already has it folded in (checkpoint.pretrained)
    regression: bool = False
    target_scale: object = None
    # --calibrate: the logits are divided by it before they become probabilities (1.0: not calibrated)
    temperature: float = 1.0
    training_args: dict = field(default_factory=dict, repr=False)  # the whole record, as written

    @classmethod
    def read(cls, model_fn, needed=("config.json", TRAINING_ARGS, WEIGHTS)):
        """The record of a checkpoint directory; a missing file or a damaged record is one line."""
        model_fn = check_checkpoint(model_fn, needed)
        config = json_object(model_fn / "config.json")
        training_args = json_object(model_fn / TRAINING_ARGS)
        labels = label_names(config, model_fn / "config.json")
        multi_label = config.get("problem_type") == MULTI_LABEL_PROBLEM
        max_length = training_args.get("max_length", DEFAULT_MAX_LENGTH)
        if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 1:
            raise UserError(f"{model_fn}/{TRAINING_ARGS}: max_length {max_length!r} is not a positive whole number: "
                            f"fix it, or delete the key for {DEFAULT_MAX_LENGTH}")
        long_text = training_args.get("long_text") or RECORDED_LONG_TEXT
        pooling = training_args.get("window_pooling") or DEFAULT_POOLING
        if long_text not in LONG_TEXT_CHOICES or pooling not in POOLING_CHOICES:
            raise UserError(f"{model_fn}/{TRAINING_ARGS}: long_text {long_text!r} / window_pooling {pooling!r}: "
                            f"expected one of {', '.join(LONG_TEXT_CHOICES)} / {', '.join(POOLING_CHOICES)}")
        regression = config.get("problem_type") == REGRESSION_PROBLEM
        if regression and len(labels) != 1:
            raise UserError(f"{model_fn}/config.json: a regression model has one output, this one {len(labels)}")
        scale = (training_args.get("target_mean"), training_args.get("target_std"))
        temperature = training_args.get(CALIBRATION_KEY, 1.0)
        if (not isinstance(temperature, (int, float)) or isinstance(temperature, bool)
                or not 0 < temperature < float("inf")):
            raise UserError(f"{model_fn}/{TRAINING_ARGS}: {CALIBRATION_KEY} {temperature!r} is not a number above 0: fix it, "
                            "or delete the key for uncalibrated probabilities")
        return cls(path=model_fn, labels=tuple(labels), multi_label=multi_label,
                   threshold=stored_threshold(training_args, len(labels), model_fn) if multi_label else None,
                   label_separator=training_args.get("label_separator") or DEFAULT_LABEL_SEPARATOR,
                   max_length=max_length, pairs=bool(training_args.get("has_pairs", False)),
                   position_limit=position_limit(config), label_columns=training_args.get("label_columns"),
                   label_names_fn=training_args.get("label_names_fn"), long_text=long_text,
                   stride=training_args.get("stride"), window_pooling=pooling, regression=regression,
                   target_scale=scale if regression and None not in scale else None,
                   temperature=float(temperature), training_args=training_args)

    @property
    def calibration(self):
        """The --calibrate temperature the logits are divided by, or None for a model trained without it
        (training.evaluation.evaluation's `temperature`)."""
        return None if self.temperature == 1.0 else self.temperature

    def input_length(self, requested=None, limit=None):
        """Tokens per input: --max_length when given (clamped to `limit`, else to the position embeddings),
        else the length the model was trained with."""
        if not requested:
            return self.max_length
        return clamp_max_length(requested, limit or self.position_limit)

    def long_text_settings(self, long_text=None, stride=None, pooling=None, max_length=None):
        """(long_text, stride, window_pooling) for running the model: each flag given, else as trained. A
        pair model truncates; a stride left to its default is the trained one at the trained length, else
        the default share of `max_length`."""
        long_text = "truncate" if self.pairs else (long_text or self.long_text)
        pooling = pooling or self.window_pooling
        max_length = max_length or self.max_length
        if long_text != "sliding":
            return long_text, None, pooling
        if stride is None:
            stride = self.stride if self.stride is not None and max_length == self.max_length else default_stride(max_length)
        error = check_stride(stride, max_length)
        if error:
            raise UserError(error)
        return long_text, stride, pooling

    def describe(self):
        """The facts a user asks of a served model (GET /info), as plain JSON values."""
        return {"model_fn": str(self.path), "labels": list(self.labels), "multi_label": self.multi_label,
                "threshold": list(self.threshold) if isinstance(self.threshold, tuple) else self.threshold,
                "max_length": self.max_length, "pairs": self.pairs, "regression": self.regression,
                "long_text": self.long_text, "stride": self.stride, "window_pooling": self.window_pooling,
                "temperature": self.temperature, "pretrained_model_name": self.training_args.get("pretrained_model_name"),
                "trainer": self.training_args.get("trainer"), "finished_at": self.training_args.get("finished_at"),
                "trained_with": self.training_args.get("versions")}


def stored_threshold(training_args, n_labels, model_fn):
    """The decision threshold a multi-label checkpoint was saved with: one number for every label, or a
    list of one per label (--threshold_per_label, returned as a tuple); DEFAULT_THRESHOLD when it has none."""
    threshold = training_args.get("threshold", DEFAULT_THRESHOLD)
    values = threshold if isinstance(threshold, list) else [threshold]
    if ((isinstance(threshold, list) and len(threshold) != n_labels)
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1 for v in values)):
        raise UserError(f"{model_fn}: {TRAINING_ARGS} has threshold {str(threshold)[:80]}, which is neither a "
                        f"number from 0 to 1 nor a list of one per label ({n_labels}): fix it, or delete it for "
                        f"{DEFAULT_THRESHOLD}")
    return tuple(threshold) if isinstance(threshold, list) else threshold


def check_checkpoint(model_fn, needed=("config.json", TRAINING_ARGS, WEIGHTS)):
    """The checkpoint directory as a Path; stops with a clear message when it is absent or lacks a file."""
    model_fn = Path(model_fn)
    if not model_fn.is_dir():
        raise UserError(f"{model_fn}: no such model directory: train one with finetune_plm_hf.py or "
                        "finetune_plm_native.py --model_fn " + str(model_fn))
    missing = [name.replace("*", "model") for name in needed if not any(model_fn.glob(name))]
    if missing:
        raise UserError(f"{model_fn}: not a checkpoint written by finetune_plm_hf.py/finetune_plm_native.py "
                        f"(missing {', '.join(missing)})")
    return model_fn


def label_names(config, config_path):
    """The class names of config.json's id2label, which must name classes 0..n-1."""
    id2label = config.get("id2label")
    if not isinstance(id2label, dict) or not id2label:
        raise UserError(f"{config_path}: no id2label: the label names are missing")
    try:
        ids = sorted(int(key) for key in id2label)
    except ValueError:
        raise UserError(f"{config_path}: id2label keys must be class ids 0, 1, ...; found {list(id2label)[:5]}") from None
    if ids != list(range(len(ids))):
        gap = next(i for i, key in enumerate(ids) if i != key)
        raise UserError(f"{config_path}: id2label has no class {gap}: class ids must run 0..{len(ids) - 1} "
                        "without gaps")
    by_id = {int(key): name for key, name in id2label.items()}
    return [str(by_id[i]) for i in ids]


def json_object(path):
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise UserError(f"{path}: cannot read it as JSON ({first_line(error)})") from None
    if not isinstance(value, dict):
        raise UserError(f"{path}: expected a JSON object, found {type(value).__name__}")
    return value


def weights_digest(model_fn):
    """The identity of a checkpoint's weights: the SHA-256 of its safetensors files (cheap next to loading
    them). An ONNX export records it, and the ONNX classifier refuses an export whose weights are gone."""
    files = sorted(Path(model_fn).glob(WEIGHTS))
    return ",".join(f"{path.name}:{file_digest(path)}" for path in files)


def save_model(directory, model, tokenizer, training_args):
    """Weights as safetensors, config with label names, tokenizer, and the record of how it was trained. A
    LoRA model: its adapter in adapter/, the weights with it merged in (checkpoint.lora)."""
    from checkpoint.lora import is_lora, save_lora_model
    model = getattr(model, "module", model)  # unwrap DistributedDataParallel
    if is_lora(model):
        model = save_lora_model(directory, model)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    (Path(directory) / TRAINING_ARGS).write_text(json.dumps(training_args, indent=2, ensure_ascii=False) + "\n")


def load_checkpoint(model_fn, device="cpu"):
    """(tokenizer, model, SavedModel) of a directory written by either trainer; an edited or damaged one
    is a one-line error, not a traceback."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    from checkpoint.pretrained import load_tokenizer
    saved = SavedModel.read(model_fn)
    tokenizer = load_tokenizer(saved.path)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its multi-line load report would come before our one line
    hf_logging.disable_progress_bar()  # a bar for a second's load only clutters the classifier's stderr
    try:
        model = AutoModelForSequenceClassification.from_pretrained(saved.path)
    except Exception as error:  # safetensors, json and torch each raise their own kinds
        raise UserError(f"{saved.path}: cannot load the checkpoint (truncated or corrupt file?): "
                        f"{first_line(error)}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    return tokenizer, model.to(device).eval(), saved
