"""--config FILE (options/config.py, read by options.parser.ArgumentParser): flag values from YAML or JSON on
every entry point, the command line over them, a saved model's training_args.json as a config, and one error
line for a bad file. Parsing only: the fast tier."""
import json
import re

import pytest
from conftest import ROOT, run_script
from test_model_card import saved_model

from options.config import RECORD_KEYS
from options.training_flags import training_parser


def parse(*argv):
    return training_parser("test").parse_args([str(a) for a in argv])


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_yaml_values_are_flags_and_the_command_line_overrides_them(tmp_path):
    config = write(tmp_path / "run.yaml", "model_fn: models/x\ntrain_fn: train.tsv\nlr: 1e-4\nn_epochs: 2\n"
                                          "no_group_by_length: true\nextend_vocab: true\ndelimiter: tab\n"
                                          "label_columns: [joy, anger]\nmulti_label: true\nmax_length: null\n")
    args = parse("--config", config, "--n_epochs", 5)
    assert (args.model_fn, args.train_fn, args.lr, args.n_epochs) == ("models/x", "train.tsv", 1e-4, 5)
    assert args.no_group_by_length is True and args.extend_vocab == "yes" and args.delimiter == "\t"
    assert args.label_columns == "joy,anger" and args.max_length == 128  # a list as the flag's a,b; null: default
    assert args.config == str(config)
    assert parse("--config", config, "--model_fn", "models/y").model_fn == "models/y"
    # the parser is left as it was: the next parse without the file has the defaults again
    assert parse("--model_fn", "m", "--train_fn", "t").lr is None


def test_json_and_switches(tmp_path):
    config = write(tmp_path / "run.json", json.dumps({"model_fn": "m", "train_fn": "t", "calibrate": True,
                                                        "--batch_size": 8}))
    args = parse("--config", config)
    assert args.calibrate is True and args.batch_size == 8
    assert parse("--config", config, "--no_calibrate").calibrate is False
    off = write(tmp_path / "off.yaml", "model_fn: m\ntrain_fn: t\nno_calibrate: true\n")
    assert parse("--config", off).calibrate is False


def test_a_saved_models_record_is_a_config(tmp_path):
    """training_args.json: the flags as recorded (resolved ones as resolved), the record's own keys skipped."""
    model_fn = saved_model(tmp_path / "review", record={
        "hp_search": {"trials": 8, "best_trial": 3}, "calibration_temperature": 1.3, "threshold": 0.4,
        "config": "old.yaml", "distillation": None})
    record = json.loads((model_fn / "training_args.json").read_text())
    assert set(record) - {action.dest for action in training_parser("")._actions} <= RECORD_KEYS
    args = parse("--config", model_fn / "training_args.json", "--model_fn", tmp_path / "again")
    assert args.model_fn == str(tmp_path / "again") and args.train_fn == "data/review.tsv"
    assert (args.n_epochs, args.batch_size, args.lr, args.precision) == (4, 16, 2e-4, "fp32")
    assert args.hp_search is None  # the winner's search record is not a trial count


def test_a_repeated_run_neither_resumes_nor_pushes(tmp_path, capsys):
    """A saved run that was resumed, or pushed, repeats as a new run that publishes nowhere unless told."""
    model_fn = saved_model(tmp_path / "review", record={"resume": True, "push_to_hub": "me/review", "hub_private": True})
    args = parse("--config", model_fn / "training_args.json", "--model_fn", tmp_path / "again")
    assert (args.resume, args.push_to_hub, args.hub_private) == (False, None, False)
    assert "its --resume, --push_to_hub, --hub_private is not repeated" in capsys.readouterr().err
    args = parse("--config", model_fn / "training_args.json", "--push_to_hub", "me/again")
    assert args.push_to_hub == "me/again"


@pytest.mark.parametrize("text, message", [
    ("lrr: 0.1\n", "unknown key 'lrr': not a flag of"),
    ("labels: [a]\n", None),  # a record key (training_args.json's): skipped
    ("lr: abc\n", "lr: 'abc' is not a number; expected a number more than 0"),
    ("n_epochs: 0\n", "n_epochs: 0 is out of range; expected a whole number at least 1"),
    ("long_text: middle\n", "long_text: 'middle' is not one of truncate, head_tail, sliding"),
    ("calibrate: yes please\n", "calibrate: expected true or false, found 'yes please'"),
    ("batch_size: true\n", "batch_size: expected a value, found true"),
    ("text_column: {a: 1}\n", "text_column: expected a value, found a mapping"),
    ("- lr\n- 0.1\n", "expected a mapping of flag names to values, found list"),
    ("lr: [\n", "not valid YAML"),
])
def test_a_bad_config_is_one_line_naming_the_file_and_key(tmp_path, text, message, capsys):
    config = write(tmp_path / "run.yaml", text)
    if message is None:
        parse("--config", config, "--model_fn", "m", "--train_fn", "t")
        return
    with pytest.raises(SystemExit) as exit:
        parse("--config", config, "--model_fn", "m", "--train_fn", "t")
    assert exit.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: --config {config}: {message}"), lines
    assert lines[0].endswith("(did you mean lr?) (see --help)" if "lrr" in text else "(see --help)")


def test_a_missing_config_file(tmp_path, capsys):
    with pytest.raises(SystemExit):
        parse("--config", tmp_path / "nothing.yaml")
    assert capsys.readouterr().err.startswith(f"error: --config {tmp_path / 'nothing.yaml'}: cannot read it (")


def test_every_entry_point_reads_a_config(tmp_path):
    """One parser class for all: classify_plm.py, evaluate_plm.py, export_plm.py and serve_plm.py take --config
    too, each with its own flags; a trainer's run through its main() stops at a bad key before anything."""
    import sys

    import classify_plm
    import serve_plm
    config = write(tmp_path / "classify.yaml", "model_fn: models/review\ntop_k: 2\nwith_prob: true\nbackend: onnx\n")
    saved_argv, sys.argv = sys.argv, ["classify_plm.py", "--config", str(config)]
    try:
        args = classify_plm.parse_args()
        assert (args.model_fn, args.top_k, args.with_prob, args.backend) == ("models/review", 2, True, "onnx")
        sys.argv = ["serve_plm.py", "--config", str(write(tmp_path / "serve.yaml", "model_fn: m\nport: 8080\n"))]
        assert serve_plm.parse_args().port == 8080
    finally:
        sys.argv = saved_argv
    bad = write(tmp_path / "bad.yaml", "model_fn: m\nlr: 0.1\n")
    for script in ("classify_plm.py", "export_plm.py", "evaluate_plm.py"):
        extra = ["--test_fn", "t.tsv"] if script == "evaluate_plm.py" else []
        result = run_script(script, "--config", bad, *extra, check=False)
        assert result.returncode == 2 and result.stderr.strip().splitlines() == [
            f"error: --config {bad}: unknown key 'lr': not a flag of {script} (see --help)"], result.stderr
    model_fn = tmp_path / "never"
    result = run_script("finetune_plm_native.py", "--config", write(tmp_path / "t.yaml", "train_fn: t\nlrr: 1\n"),
                        "--model_fn", model_fn, check=False)
    assert result.returncode == 2 and "unknown key 'lrr'" in result.stderr and not model_fn.exists()


def readme_configs():
    """The example configs the README gives, one per task (```yaml blocks in its config section)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Config files"):]
    section = section[:section.index("\n## ", 1)]
    return re.findall(r"```yaml\n(.*?)```", section, flags=re.S)


def test_the_readme_examples_are_valid_configs(tmp_path):
    examples = readme_configs()
    assert len(examples) >= 4  # single-label, multi-label, pairs, regression
    tasks = set()
    for i, text in enumerate(examples):
        args = parse("--config", write(tmp_path / f"example{i}.yaml", text))
        tasks.add("regression" if args.regression else "multi-label" if args.multi_label or args.label_columns
                  else "pairs" if args.text_pair_column else "single-label")
    assert tasks == {"single-label", "multi-label", "pairs", "regression"}
