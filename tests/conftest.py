"""Shared fixtures: paths, the real corpora in ../shared/data (skip when absent), a tiny model, and a
helper that runs the real scripts as a user would."""
import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

# Parsed and tokenized data goes to a cache of the test session's own (set before datasets is
# imported, which reads it once), not into the user's ~/.cache.
os.environ["HF_DATASETS_CACHE"] = tempfile.mkdtemp(prefix="finetune_plm_test_cache_")
atexit.register(shutil.rmtree, os.environ["HF_DATASETS_CACHE"], ignore_errors=True)

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
# Under `pytest -n 2` (make test) two scripts run at once on this 2-core machine: one thread each,
# else four threads fight over two cores.
SCRIPT_ENV = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1",
              "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1" if os.environ.get("PYTEST_XDIST_WORKER") else "2")}


def run_script(script, *args, stdin=None, check=True, timeout=600, env=None):
    """Run one of the entry points with this interpreter; returns the CompletedProcess (text mode)."""
    result = subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=ROOT,
                            input=stdin, capture_output=True, text=True, timeout=timeout,
                            env={**SCRIPT_ENV, **(env or {})})
    if check and result.returncode != 0:
        raise AssertionError(f"{script} exited {result.returncode}\n--- stderr\n{result.stderr[-4000:]}")
    return result


def classifier_in_process(model_fn, *flags):
    """The classifier classify_plm.py builds from these flags (its own parser and defaults), built in this
    process: one model load and no interpreter start, 3-4 s less of the suite than a script run."""
    from inference.load import load_classifier
    return load_classifier(classifier_options(model_fn, *flags))


def classifier_options(model_fn, *flags):
    """The ClassifierOptions classify_plm.py builds from these flags (its own parser and defaults)."""
    import classify_plm
    from inference.classifier import ClassifierOptions
    argv, sys.argv = sys.argv, ["classify_plm.py", "--model_fn", str(model_fn), *map(str, flags)]
    try:
        return ClassifierOptions.from_flags(vars(classify_plm.parse_args()))
    finally:
        sys.argv = argv


def data_options(**flags):
    """DataOptions from trainer flag values (the parser's defaults for the rest), through the trainers' own
    conversion, options.training_flags.data_options."""
    return training_options(**flags).data


def training_options(*argv, **flags):
    """The TrainingOptions a trainer builds from this command line (--model_fn and --train_fn given unless
    argv gives them), with `flags` ({flag: value}) over the parsed values."""
    from options.training_flags import options_from_flags, training_parser
    required = [flag for flag in ("--model_fn", "--train_fn") if flag not in argv]
    parsed = training_parser("tests").parse_args([arg for flag in required for arg in (flag, "unused")]
                                                 + list(map(str, argv)))
    return options_from_flags({**vars(parsed), **flags})


def shared(*parts):
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent (the real corpora live in ../shared/data)")
    return path


def emotion_rows(split, n):
    """First n (label, text) rows of the emotion corpus (`text;label`, header line, split on the last `;`)."""
    lines = shared("emotion", f"{split}.txt").read_text(encoding="utf-8").splitlines()[1:n + 1]
    return [(line.rsplit(";", 1)[1], line.rsplit(";", 1)[0]) for line in lines]


def write_tsv(path, rows):
    path.write_text("".join(f"{label}\t{text}\n" for label, text in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def emotion_data(tmp_path_factory):
    """960 training and 300 validation lines of emotion in the reference `label<TAB>sentence` format."""
    directory = tmp_path_factory.mktemp("emotion")
    return {"train": write_tsv(directory / "train.tsv", emotion_rows("train", 960)),
            "valid": write_tsv(directory / "valid.tsv", emotion_rows("val", 300))}


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A 2-layer BERT built from a config, with the offline model's tokenizer: fast enough for the
    kill/resume, multi-process and reproducibility tests, and still a real transformer."""
    from transformers import AutoTokenizer, BertConfig, BertModel
    from utils.hub import default_model_path
    directory = tmp_path_factory.mktemp("tiny_bert")
    tokenizer = AutoTokenizer.from_pretrained(default_model_path())
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=64, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=128, max_position_embeddings=128)
    import torch
    torch.manual_seed(0)
    BertModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def pytest_configure(config):
    sys.path.insert(0, str(ROOT))


# `make test` runs files two at a time (--dist loadfile), in collection order: the longest first, so that
# the last file to start is a short one and neither worker idles while the other finishes a long one.
# Seconds per file in a full run on this 2-core machine (the order matters, not the figures): end_to_end 200,
# robustness 141, training_options 113, multi_label 64, accuracy_bench 22-60, onnx 58, hp_search 55, model_shapes 49.
LONGEST_FIRST = ["test_end_to_end.py", "test_robustness.py", "test_training_options.py", "test_multi_label.py",
                 "test_onnx.py", "test_hp_search.py", "test_model_shapes.py", "test_hostile_runs.py",
                 "test_bad_input.py", "test_serve.py"]


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's own order is kept
