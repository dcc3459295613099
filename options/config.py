"""--config FILE: flag values from a YAML or JSON file, read by options.parser.ArgumentParser for every entry
point. Keys are flag names (`lr`, `text_column`, `no_group_by_length`; a leading `--` may stay); each value is
checked as the flag itself checks it; the command line overrides the file; a key that is not a flag is one
error line naming the key and the file.

A saved model's training_args.json is a valid --config: `--config models/x/training_args.json --model_fn
models/y` repeats the run of models/x. Its flag keys are taken as recorded, which for a few flags is the value
the run resolved (lr by model width, precision by device, max_length clamped to the model, the pretrained
model's path, a sliding window's stride); RECORD_KEYS, what the run found and wrote beside its flags, are
skipped. Imports nothing heavy: classify_plm.py's torch-free path parses its flags through it too."""
import argparse
import difflib
import json
from pathlib import Path

from utils.errors import first_line

# What training_args.json records besides the flags (training/finish.py, training/hp_search.py and
# distill_plm.py write them; checkpoint/saved_model.py reads them): the run's facts, not settings for a new
# run, so a --config skips them. `hp_search` is a flag (the trial count) and, in a search's winner, the
# search's record (an object): skipped only as the latter. `config` is the file the recorded run read.
RECORD_KEYS = frozenset({
    "trainer", "labels", "has_pairs", "n_train", "n_valid", "world_size", "threshold", "calibration_temperature",
    "target_mean", "target_std", "versions", "finished_at", "optimizer_steps", "data", "distillation",
    "hp_search", "config", "few_shot_recipe", "trained_parameters", "all_parameters"})
# Flags of a saved run that a repeat of it must ask for itself: continuing an interrupted run (the new one has
# none) and publishing (to the same repository, over the model it repeats). A run's record is known by its
# `trainer` and `versions` keys.
NOT_REPEATED = ("resume", "push_to_hub", "hub_private")
CONFIG_HELP = ("a YAML or JSON file of flag values, {flag: value} (e.g. a model's training_args.json, to repeat "
               "its run); flags given on the command line override it")


def config_path(argv):
    """The --config FILE of a command line (the last one, as argparse takes the last value), or None."""
    path = None
    for i, token in enumerate(argv):
        if token == "--":
            break
        name, equals, value = token.partition("=")
        # argparse takes an unambiguous abbreviation (--conf) as the flag; no other flag starts with --co
        if len(name) >= 4 and "--config".startswith(name):
            if equals:
                path = value
            elif i + 1 < len(argv):
                path = argv[i + 1]
    return path


def read_config(path):
    """The file's top-level mapping; an unreadable file or one that is not a mapping is a ValueError whose
    message is the error line."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise ValueError(f"--config {path}: cannot read it ({error.strerror or first_line(error)})") from None
    try:
        if Path(path).suffix.lower() == ".json":
            values = json.loads(text)
        else:  # YAML (.yaml, .yml, or any other name: JSON is YAML too)
            import yaml
            values = yaml.safe_load(text)
    except Exception as error:  # json's and yaml's own error types
        raise ValueError(f"--config {path}: not valid {'JSON' if Path(path).suffix.lower() == '.json' else 'YAML'} "
                         f"({first_line(error)})") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ValueError(f"--config {path}: expected a mapping of flag names to values, found {type(values).__name__}")
    return values


def config_defaults(parser, path):
    """{dest: value} that the file sets, each value checked as its flag checks it, as parser defaults (so that
    the command line overrides them); the record keys a training_args.json holds are skipped. Raises ValueError
    with the error line."""
    by_name = {option.lstrip("-"): action for action in parser._actions for option in action.option_strings
               if option.startswith("--")}
    values = {}
    config = read_config(path)
    saved_run = "trainer" in config and "versions" in config
    dropped = [key for key in NOT_REPEATED if saved_run and config.get(key)]
    if dropped:
        from utils.log import log
        log.info(f"note: --config {path} is a saved run's record: its {', '.join('--' + key for key in dropped)} "
                 "is not repeated; give it on the command line to have it")
    for raw_key, value in config.items():
        key = str(raw_key).lstrip("-")
        action = by_name.get(key)
        if key == "config" or (action is None and key in RECORD_KEYS) or (
                key in RECORD_KEYS and isinstance(value, dict)) or (saved_run and key in NOT_REPEATED):
            continue
        where = f"--config {path}: {key}"
        if action is None or action.dest == "help":
            close = difflib.get_close_matches(key, [name for name in by_name if name not in ("help", "config")], n=1)
            raise ValueError(f"--config {path}: unknown key {key!r}: not a flag of {parser.prog}"
                             + (f" (did you mean {close[0]}?)" if close else ""))
        if value is None:  # null: the flag's default
            continue
        setting = flag_value(action, value, where)
        if setting is not _SKIP:
            values[action.dest] = setting
    return values


_SKIP = object()


def flag_value(action, value, where):
    """The value a flag takes from a config value, checked by the flag's own type and choices."""
    if action.nargs == 0:  # a switch: true turns it on; false leaves it off (a --no_ switch: leaves it be)
        if not isinstance(value, bool):
            raise ValueError(f"{where}: expected true or false, found {value!r}")
        if value:
            return action.const
        return False if action.const is True else _SKIP
    if isinstance(value, bool):
        if action.nargs == "?" and value:  # `extend_vocab: true`, as the bare flag
            return action.const
        raise ValueError(f"{where}: expected a value, found {str(value).lower()}")
    if isinstance(value, dict):
        raise ValueError(f"{where}: expected a value, found a mapping")
    text = ",".join(map(str, value)) if isinstance(value, list) else str(value)  # a list: as the flag's a,b,c
    converted = text
    if action.type is not None:
        try:
            converted = action.type(text)
        except (argparse.ArgumentTypeError, TypeError, ValueError) as error:
            raise ValueError(f"{where}: {first_line(error)}") from None
    if action.choices is not None and converted not in action.choices:
        raise ValueError(f"{where}: {text!r} is not one of {', '.join(map(str, action.choices))}")
    # a string: argparse converts a string default once more at the end of parsing, as it does the flag's text
    return text if action.type is not None else converted
