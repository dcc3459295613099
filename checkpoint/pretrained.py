"""Load and check the tokenizer and the sequence classifier; everything goes through the Auto classes."""
from pathlib import Path

from utils.errors import UserError, first_line
from utils.log import log

TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model",
                   "tokenizer.model")
MIN_VOCABULARY = 100


def load_tokenizer(name):
    from transformers import AutoTokenizer
    if Path(name).is_dir() and not any((Path(name) / file).exists() for file in TOKENIZER_FILES):
        raise UserError(f"{name}: no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...): copy the "
                        "tokenizer of the model in with tokenizer.save_pretrained, or point at a complete model")
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
    except Exception as error:  # OSError, ValueError, or the tokenizers library's own exception
        raise UserError(f"cannot load a tokenizer from '{name}': {first_line(error)}") from None
    if len(tokenizer) < MIN_VOCABULARY:
        raise UserError(f"{name}: the tokenizer knows only {len(tokenizer)} tokens, so nearly every word would be "
                        "unknown: its vocabulary file is missing or damaged")
    return tokenizer


def load_pretrained_model(name, labels, freeze_encoder=False, multi_label=False, label_odds=None, regression=False):
    """A sequence classifier whose config carries the real label names. From a pretrained encoder the
    head is new; from an already fine-tuned classifier its head is kept if the label count matches and
    replaced (with a notice) if not, so a checkpoint can be fine-tuned further on a new task.
    label_odds (multi-label): a new head's output biases start at these log-odds (start_at_label_odds)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the "newly initialized classifier" notice is expected here
    try:
        previous = _previous_labels(AutoConfig.from_pretrained(name))
        replace_head = previous is not None and len(previous) != len(labels)
        if replace_head:
            log.info(f"notice: {name} is a classifier for {len(previous)} labels; its head is replaced by a new one "
                     f"for the {len(labels)} labels here")
        elif previous is not None and previous != list(labels):
            log.info(f"notice: {name} was fine-tuned for the labels {', '.join(previous)}; its head is the starting "
                     f"point for {', '.join(labels)}")
        model = AutoModelForSequenceClassification.from_pretrained(
            name, num_labels=len(labels), ignore_mismatched_sizes=replace_head,
            id2label=dict(enumerate(labels)), label2id={label: i for i, label in enumerate(labels)},
            # multi-label: a sigmoid per label (also in transformers.pipeline), single-label: a softmax,
            # regression: the one output as it is
            problem_type=("regression" if regression else
                          "multi_label_classification" if multi_label else "single_label_classification"))
    except Exception as error:  # OSError, ValueError, or a RuntimeError about mismatched weights
        raise UserError(f"cannot load a model from '{name}': {first_line(error)}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    if label_odds is not None and (previous is None or replace_head):
        start_at_label_odds(model, label_odds)
    if freeze_encoder:
        for parameter in model.base_model.parameters():
            parameter.requires_grad = False
    return model


def start_at_label_odds(model, log_odds):
    """Set the output biases of a new multi-label head to the labels' log-odds in the training data, so
    its first predictions are the label frequencies instead of 0.5 for every label. From 0.5, the first
    steps' gradients push every label down at once; on GoEmotions (28 labels, 1.2 per example) at lr 2e-4
    that flattened the encoder: the training loss sat at the label-frequency level (0.145) for the whole
    first epoch and validation macro-F1 was 0.12 after it, 0.20 after two."""
    import torch
    head = output_layer(model)
    with torch.no_grad():
        head.bias.copy_(torch.as_tensor(log_odds, dtype=head.bias.dtype))


def output_layer(model):
    """The classification head's last Linear layer (BERT's `classifier`, RoBERTa's `classifier.out_proj`); of
    a LoRA model, the copy that trains (peft keeps the original beside it)."""
    import torch
    model = model.get_base_model() if hasattr(model, "get_base_model") else model
    return [module for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and module.out_features == model.config.num_labels
            and not name.startswith(model.base_model_prefix + ".") and "original_module" not in name][-1]


def output_in_label_units(model, scale):
    """--regression: fold the targets' (mean, std) into the output layer (w std, b std + mean), so the saved
    model outputs the number itself: classify_plm.py in both backends, the ONNX export and
    transformers.pipeline (function_to_apply none for a regression config) all read it as it is."""
    import torch
    mean, std = scale
    head = output_layer(getattr(model, "module", model))
    with torch.no_grad():
        head.weight.mul_(std)
        head.bias.mul_(std).add_(mean)


def _previous_labels(config):
    """The label names of an already fine-tuned sequence classifier, else None."""
    if not any(arch.endswith("ForSequenceClassification") for arch in (config.architectures or [])):
        return None
    return [config.id2label[i] for i in range(config.num_labels)]
