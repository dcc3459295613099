"""Train/validation/test splits and the label mapping they share."""
import sys
from dataclasses import dataclass, field
from pathlib import Path

from data_load.readers import read_examples
from utils.errors import UserError, located

MAX_LABELS = 10_000
MANY_LABELS = 50  # above this, a label column with more labels than half its rows is refused


@dataclass
class Splits:
    train: list
    valid: list
    test: list | None
    labels: list = field(default_factory=list)  # index = class id

    @property
    def label2id(self):
        return {label: i for i, label in enumerate(self.labels)}

    @property
    def has_pairs(self):
        return any(example.text_pair is not None for example in self.train)


def label_list(examples, path):
    """Sorted distinct labels: numeric order if every label is an integer (so 2 < 10), else text order.

    Sorting makes the mapping independent of file order, so two runs on shuffled copies of one
    file give the same class ids."""
    labels = {example.label for example in examples}
    # Classes repeat: when most rows carry a label of their own, the column holds texts or ids.
    if len(labels) > MAX_LABELS or (len(labels) > MANY_LABELS and len(labels) > len(examples) / 2):
        raise UserError(f"{path}: {len(labels)} distinct labels in {len(examples)} rows: this is probably not the "
                        "label column; choose it with --label_column")
    if len(labels) < 2:
        raise UserError(f"{path}: only one class ({next(iter(labels))!r}): a classifier needs at least two")
    if all(_is_int(label) for label in labels):
        by_value = {}
        for label in sorted(labels):
            if int(label) in by_value:
                raise UserError(f"{path}: labels {by_value[int(label)]!r} and {label!r} are the same number written "
                                "two ways: write it one way")
            by_value[int(label)] = label
        return sorted(labels, key=int)
    by_case = {}
    for label in sorted(labels):
        if label.casefold() in by_case:
            print(f"warning: {path}: labels {by_case[label.casefold()]!r} and {label!r} differ only in case; they are "
                  "two classes", file=sys.stderr)
        by_case.setdefault(label.casefold(), label)
    return sorted(labels)


def check_known_labels(examples, labels, path):
    known = set(labels)
    for example in examples:
        if example.label not in known:
            raise located(path, example.line, f"label {example.label!r} never occurs in the training data "
                                              f"(known: {', '.join(labels[:20])}{' ...' if len(labels) > 20 else ''})")


def split_off_validation(examples, ratio, seed):
    """Seeded split of `ratio` of the examples for validation, stratified by label where possible."""
    if not 0 < ratio < 1:
        raise UserError(f"--valid_ratio must be between 0 and 1, got {ratio}")
    from sklearn.model_selection import train_test_split  # here, not at the top: 2 s of start-up
    labels = [example.label for example in examples]
    try:
        return train_test_split(examples, test_size=ratio, random_state=seed, stratify=labels)
    except ValueError:
        # Some class has a single example (or the split is too small to hold each class):
        # fall back to an unstratified split rather than refusing to train.
        print("warning: cannot stratify the validation split (too few examples of some class); "
              "splitting at random", file=sys.stderr)
        try:
            return train_test_split(examples, test_size=ratio, random_state=seed)
        except ValueError as error:
            raise UserError(f"cannot split off {ratio:.0%} for validation: {error}") from None


def load_splits(args):
    """Read --train_fn, --valid_fn (or split by --valid_ratio) and --test_fn; check labels agree."""
    def read(path):
        return read_examples(path, args.text_column, args.text_pair_column, args.label_column)

    for flag in ("valid_fn", "test_fn"):
        other = getattr(args, flag)
        if other and Path(other).exists() and Path(args.train_fn).exists() and Path(other).samefile(args.train_fn):
            raise UserError(f"--{flag} {other} is the training file: scores on data the model trained on measure "
                            f"nothing; give a held-out file" + (" or leave out --valid_fn to split one off"
                                                                if flag == "valid_fn" else ""))
    train = read(args.train_fn)
    labels = label_list(train, args.train_fn)
    if args.valid_fn:
        valid = read(args.valid_fn)
        check_known_labels(valid, labels, args.valid_fn)
    else:
        train, valid = split_off_validation(train, args.valid_ratio, args.seed)
    test = None
    if args.test_fn:
        test = read(args.test_fn)
        check_known_labels(test, labels, args.test_fn)
    return Splits(train=train, valid=valid, test=test, labels=labels)


def _is_int(text):
    return text.lstrip("-").isdigit()
