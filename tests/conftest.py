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


# Entry points a test may run inside its own process: what a script run adds is an interpreter start and
# the imports of torch, transformers and datasets (4-5 s of CPU each time on this machine), which the
# suite paid about sixty times. What needs a process of its own still gets one: a different environment
# (`env=`), worker processes or a Ray cluster (file mode's --num_workers, --engine), the search's trials and --cv's folds,
# and the tests that send signals, start torchrun or read `-X importtime` (they call subprocess themselves).
IN_PROCESS = {"finetune_plm_native.py", "finetune_plm_hf.py", "distill_plm.py", "classify_plm.py", "evaluate_plm.py",
              "export_plm.py"}
NEEDS_A_PROCESS = {"--num_workers", "--engine", "--ray_address", "--hp_search", "--cv"}


def run_script(script, *args, stdin=None, check=True, timeout=600, env=None, in_process=None):
    """Run one of the entry points as a user would, with this interpreter; returns a CompletedProcess (text
    mode). in_process (default: where nothing above needs a process of its own) calls the script's main()
    here instead, with the same argv, stdin, stdout, stderr and exit status."""
    args = list(map(str, args))
    if in_process is None:
        in_process = script in IN_PROCESS and not env and not NEEDS_A_PROCESS.intersection(args)
    if in_process:
        result = run_in_process(script, args, stdin)
    else:
        result = subprocess.run([sys.executable, str(ROOT / script), *args], cwd=ROOT,
                                input=stdin, capture_output=True, text=True, timeout=timeout,
                                env={**SCRIPT_ENV, **(env or {})})
    if check and result.returncode != 0:
        raise AssertionError(f"{script} exited {result.returncode}\n--- stderr\n{result.stderr[-4000:]}")
    return result


_entry_points = {}


def run_in_process(script, args, stdin=None):
    """`python script args < stdin` as a call of its main() in this process: what the process would print,
    its exit status (2 for a user error, 1 with the traceback for a bug), and this process's argv, standard
    streams, working directory, environment, signal handlers and torch threads as they were afterwards."""
    import contextlib
    import importlib.util
    import io
    import signal
    import traceback

    import torch
    from utils.errors import exit_on_user_error
    if script not in _entry_points:
        spec = importlib.util.spec_from_file_location(f"entry_{Path(script).stem}", ROOT / script)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _entry_points[script] = module
    stdout, stderr = io.BytesIO(), io.BytesIO()
    streams = (io.TextIOWrapper(io.BytesIO((stdin or "").encode()), encoding="utf-8"),
               io.TextIOWrapper(stdout, encoding="utf-8", write_through=True),
               io.TextIOWrapper(stderr, encoding="utf-8", write_through=True))
    saved = (sys.argv, (sys.stdin, sys.stdout, sys.stderr), os.getcwd(), dict(os.environ),
             {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}, torch.get_num_threads())
    sys.argv = [str(ROOT / script), *args]
    sys.stdin, sys.stdout, sys.stderr = streams
    os.chdir(ROOT)
    os.environ.update({key: SCRIPT_ENV[key] for key in ("TOKENIZERS_PARALLELISM", "OMP_NUM_THREADS")})
    torch.set_num_threads(int(SCRIPT_ENV["OMP_NUM_THREADS"]))
    code = 0
    try:
        exit_on_user_error(_entry_points[script].main)
    except SystemExit as exit:
        code = exit.code if isinstance(exit.code, int) else (0 if exit.code is None else 1)
    except BaseException:  # a bug: the process would print its traceback and exit 1
        traceback.print_exc(file=sys.stderr)
        code = 1
    finally:
        for stream in streams[1:]:
            with contextlib.suppress(ValueError):
                stream.flush()
        sys.argv = saved[0]
        sys.stdin, sys.stdout, sys.stderr = saved[1]
        os.chdir(saved[2])
        os.environ.clear()
        os.environ.update(saved[3])
        for signum, handler in saved[4].items():
            signal.signal(signum, handler)
        torch.set_num_threads(saved[5])
    text = (lambda data: data.getvalue().decode("utf-8", errors="replace").replace("\r\n", "\n").replace("\r", "\n"))  # as text=True reads it
    return subprocess.CompletedProcess([script, *args], code, text(stdout), text(stderr))


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


N_EMOTION_TRAIN = 480  # the end-to-end fine-tunes' training lines (tests/test_end_to_end.py)


def emotion_rows(split, n):
    """First n (label, text) rows of the emotion corpus (`text;label`, header line, split on the last `;`)."""
    lines = shared("emotion", f"{split}.txt").read_text(encoding="utf-8").splitlines()[1:n + 1]
    return [(line.rsplit(";", 1)[1], line.rsplit(";", 1)[0]) for line in lines]


def write_tsv(path, rows):
    path.write_text("".join(f"{label}\t{text}\n" for label, text in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def emotion_data(tmp_path_factory):
    """480 training and 300 validation lines of emotion in the reference `label<TAB>sentence` format."""
    directory = tmp_path_factory.mktemp("emotion")
    return {"train": write_tsv(directory / "train.tsv", emotion_rows("train", N_EMOTION_TRAIN)),
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
# robustness 141, training_options 113, data_quality 100, multi_label 64, accuracy_bench 22-60, onnx 58, hp_search 55,
# lora 52 (alone), model_shapes 49.
LONGEST_FIRST = ["test_end_to_end.py", "test_robustness.py", "test_training_options.py", "test_data_quality.py",
                 "test_multi_label.py", "test_onnx.py", "test_hp_search.py", "test_lora.py", "test_model_shapes.py",
                 "test_hostile_runs.py",
                 "test_bad_input.py", "test_serve.py"]


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's own order is kept
