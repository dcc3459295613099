"""Command-line parsing for every entry point: one-line errors and range-checked flag values.

Imports nothing heavy (no torch, no transformers): the torch-free classifier parses its flags here too."""
import argparse
import math
import sys


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one line, `error: argument --batch_size: ...`, exit code 2 (argparse
    itself prints the whole usage first)."""

    def error(self, message):
        print(f"error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


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
