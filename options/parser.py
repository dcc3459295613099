"""Command-line parsing for every entry point: one-line errors, range-checked flag values, and the flag
groups several commands share, each defined once (columns and labels, device and precision, the cache).

Imports nothing heavy (no torch, no transformers): the torch-free classifier parses its flags here too."""
import argparse
import math
import sys

from options.config import CONFIG_HELP, config_defaults, config_path
from data_load.long_text import DEFAULT_LONG_TEXT, LONG_TEXT_CHOICES, POOLING_CHOICES, STRIDE_SHARE
from data_load.tokens import MIN_LENGTH
from utils.log import log


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one line, `error: argument --batch_size: ...`, exit code 2 (argparse
    itself prints the whole usage first); and --config FILE on every command (options/config.py): the
    file's values become the flags' defaults, so the command line overrides them."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_argument("--config", metavar="FILE", help=CONFIG_HELP)

    def error(self, message):
        log.error(f"{message} (see --help)")
        sys.exit(2)

    def parse_known_args(self, args=None, namespace=None):
        args = sys.argv[1:] if args is None else list(args)
        path = config_path(args)
        if path is None:
            return super().parse_known_args(args, namespace)
        try:
            values = config_defaults(self, path)
        except ValueError as error:
            self.error(str(error))
        # the file's values as defaults for this parse only (a parser may parse again: the search's checks)
        touched = [action for action in self._actions if action.dest in values and action.default is not argparse.SUPPRESS]
        saved = [(action, action.default, action.required) for action in touched]
        for action in touched:
            action.default = values[action.dest]
            action.required = False  # given by the file (--model_fn)
        try:
            return super().parse_known_args(args, namespace)
        finally:
            for action, default, required in saved:
                action.default, action.required = default, required


def _number(kind, low=None, high=None, low_open=False, high_open=False):
    """An argparse `type` that accepts `kind` values in a range and names the range when it refuses."""
    if low is not None and high is not None:
        allowed = f"{'more than' if low_open else 'at least'} {low} and {'below' if high_open else 'at most'} {high}"
    elif low is not None:
        allowed = f"{'more than' if low_open else 'at least'} {low}"
    else:
        allowed = "any"
    noun = "a whole number" if kind is int else "a number"

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {noun}; expected {noun} {allowed}") from None
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text} is not finite; expected {noun} {allowed}")
        too_low = low is not None and (value <= low if low_open else value < low)
        too_high = high is not None and (value >= high if high_open else value > high)
        if too_low or too_high:
            raise argparse.ArgumentTypeError(f"{text} is out of range; expected {noun} {allowed}")
        return value
    parse.__name__ = kind.__name__  # argparse names the type in some messages
    return parse


def int_at_least(low):
    return _number(int, low)


def float_above(low):
    return _number(float, low, low_open=True)


def float_at_least(low):
    return _number(float, low)


def float_range(low, high, low_open=False, high_open=False):
    return _number(float, low, high, low_open, high_open)


SAVED_MODEL_HELP = "model directory written by finetune_plm_hf.py/_native.py"


def add_model_flag(group, help=SAVED_MODEL_HELP):
    """--model_fn, the model directory every command names: a saved model to read (the default help), or
    the trainers' output directory (their own help)."""
    group.add_argument("--model_fn", required=True, help=help)


class _DeprecatedName(argparse.Action):
    """An old name of a flag: sets the flag's value as the flag does, and says the name is going."""

    def __init__(self, option_strings, dest, new_name=None, **kwargs):
        super().__init__(option_strings, dest, **kwargs)
        self.new_name = new_name

    def __call__(self, parser, namespace, values, option_string=None):
        log.warning(f"{option_string} is deprecated: it is now {self.new_name} (same meaning); the old name will go")
        setattr(namespace, self.dest, values)


def add_deprecated_name(group, old_name, new_name):
    """Keep `old_name` working for the flag `new_name` (defined before it), with a warning when it is used and a
    note in --help. A renamed flag (evaluate_plm.py's --output_dir, now --output_fn as in classify_plm.py)
    must not break the commands people already run."""
    new = next(action for action in group._actions if new_name in action.option_strings)
    group.add_argument(old_name, dest=new.dest, action=_DeprecatedName, new_name=new_name, metavar=new.metavar,
                       default=argparse.SUPPRESS, help=f"deprecated: the old name of {new_name}")


CACHE_HELP = ("where parsed and tokenized data is kept between runs (default: the 🤗 datasets cache, "
              "$HF_DATASETS_CACHE or ~/.cache/huggingface/datasets, under finetune_plm/). Entries are keyed by "
              "the data's content, the tokenizer and --max_length; delete the directory to clear it")


def add_column_flags(group, trained=False, labels=True):
    """Which columns hold the text, the pair and the label(s), and how label sets are written. trained:
    for a command that reads data for a saved model, whose label flags default to how it was trained.
    labels=False: the text columns only (classifying unlabelled files)."""
    as_trained = "; default: as the model was trained" if trained else ""
    group.add_argument("--text_column", help="text column name (or 0-based position in a file without header)")
    group.add_argument("--text_pair_column", help="second-sentence column for pair tasks (MRPC, NLI)")
    if not labels:
        return
    group.add_argument("--label_column", help="label column name (or 0-based position)")
    group.add_argument("--label_separator", default=None if trained else ",",
                       help="between the labels of one example, in multi-label data" + as_trained)
    group.add_argument("--label_columns",
                       help="one 0/1 column per label instead of --label_column (multi-label): names or 0-based "
                            "positions separated by commas, or a range first:last (e.g. 여성/가족:clean)" + as_trained)
    group.add_argument("--label_names_fn", help="a file naming integer class ids, one name a line (line 1 names id 0), "
                                                "e.g. GoEmotions' labels.txt" + as_trained)


DELIMITERS = {"tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";", "pipe": "|"}


def delimiter(text):
    """--delimiter: `tab`, `,`, `;`, `|` or any one character (names: tab, comma, semicolon, pipe)."""
    value = DELIMITERS.get(text.lower(), text)
    if len(value) != 1 or value in "\r\n\"":
        raise argparse.ArgumentTypeError(f"{text!r} is not a field separator; expected tab, ',', ';', '|' or one "
                                         "other character (not a quote or a line break)")
    return value


def add_delimiter_flag(group):
    group.add_argument("--delimiter", type=delimiter, default=None,
                       help="field separator of --train_fn/--valid_fn/--test_fn, overriding what the extension implies "
                            "(.csv: `,`, .tsv: tab): tab, `,`, `;`, `|` or one character. A tab splits exactly (quotes "
                            "are text, as in STS-B's .csv files); any other separator reads CSV quoting. Rows may have "
                            "extra trailing fields; the columns asked for must exist")


def add_long_text_flags(group, trained=False):
    """--long_text, --stride and --window_pooling: what happens to a text longer than --max_length.
    trained: for a command that runs a saved model, whose defaults are how it was trained."""
    as_trained = "; default: as the model was trained" if trained else ""
    group.add_argument("--long_text", choices=LONG_TEXT_CHOICES, default=None if trained else DEFAULT_LONG_TEXT,
                       help="a text longer than --max_length: truncate (keep the first tokens), head_tail (keep the "
                            "first quarter and the last three quarters of the tokens; Sun et al. 2019; the default: "
                            "+2.4 points over truncate on IMDB at no cost, docs/accuracy.md), or sliding "
                            "(overlapping windows, each an example in training; at inference their logits are pooled "
                            "into one prediction per text). Sentence pairs are always truncated" + as_trained)
    group.add_argument("--stride", type=int_at_least(0), default=None,
                       help="sliding: tokens consecutive windows share, as the tokenizer's `stride` in transformers "
                            f"(default: {STRIDE_SHARE * 100:.0f}%% of --max_length)" + as_trained)
    group.add_argument("--window_pooling", choices=POOLING_CHOICES, default=None if trained else "mean",
                       help="sliding: how the windows' logits become the text's: their mean or elementwise max"
                            + as_trained)


def add_runtime_flags(group, only=None):
    """--device and --precision; `only` names where they apply (e.g. the torch backend)."""
    group.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help=only)
    group.add_argument("--precision", choices=["auto", "fp32", "fp16", "bf16"], default="auto",
                       help="auto: bf16 on CUDA that supports it, else fp16 on CUDA, else fp32"
                            + (f" ({only})" if only else ""))


def add_cache_flag(group):
    group.add_argument("--cache_dir", help=CACHE_HELP)


def add_batch_flags(group, batch_size):
    """How a saved model is run on data: texts a forward pass, and --max_length (default: as trained)."""
    group.add_argument("--batch_size", type=int_at_least(1), default=batch_size,
                       help="most texts in one forward pass (texts are sorted by length first)")
    group.add_argument("--max_length", type=int_at_least(MIN_LENGTH), default=None,
                       help="tokens per input (default: as trained; at most what the model allows)")
    add_long_text_flags(group, trained=True)
