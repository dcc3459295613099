"""--hp_search: Optuna trials as subprocesses of the trainer, pruned on their evaluations, the best trial's
model saved, a killed search resumed; bad flags and space files. Real runs of both trainers on the tiny model."""
import csv
import json
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
from conftest import ROOT, SCRIPT_ENV, classifier_in_process, run_script

from checkpoint.run_dir import check_output
from options.training_flags import training_options, training_parser
from utils.errors import UserError

TRAIN = ROOT / "data" / "review.sample.en.tsv"
# On the bundled reviews the tiny model learns with lr 3e-3 (validation macro-F1 0.94 after one epoch) and
# not with 1e-6 (0.33): a 1e-6 trial is pruned after its first epoch once a 3e-3 one has finished.
# --seed 10 makes TPE's first two draws 3e-3, then 1e-6 (Optuna is pinned: requirements/search.txt).
SPACE = {"lr": {"choices": [0.003, 1e-6]}, "n_epochs": 2}


@pytest.fixture
def search_flags(tmp_path, tiny_model):
    space = tmp_path / "space.json"
    space.write_text(json.dumps(SPACE))
    return ["--model_fn", tmp_path / "searched", "--train_fn", TRAIN, "--pretrained_model_name", tiny_model,
            "--hp_search", 2, "--hp_space", space, "--seed", 10]


def trials_table(model_fn):
    with open(model_fn / "hp_trials.tsv", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def trial_states(study):
    try:
        with sqlite3.connect(f"file:{study}?mode=ro", uri=True, timeout=0.1) as db:
            return [state for _, state in sorted(db.execute("SELECT number, state FROM trials"))]
    except sqlite3.OperationalError:  # not created yet, or being written
        return []


def running_trial_has_values(study):
    """Whether the running trial has its values: the search sets its `host` after suggesting them (a SIGTERM
    between Optuna's ask and the suggestions leaves a failed trial with none, as a busy machine showed)."""
    try:
        with sqlite3.connect(f"file:{study}?mode=ro", uri=True, timeout=0.1) as db:
            return bool(db.execute("SELECT COUNT(*) FROM trials t JOIN trial_user_attributes a ON a.trial_id = "
                                   "t.trial_id WHERE t.state = 'RUNNING' AND a.key = 'host'").fetchone()[0])
    except sqlite3.OperationalError:
        return False


@pytest.mark.slow  # the search and 2 trials, killed; the search again and 1 trial; classify_plm.py (~30 s)
def test_killed_search_resumes_prunes_and_saves_the_best_trial(tmp_path, search_flags):
    script, model_fn = ROOT / "finetune_plm_native.py", tmp_path / "searched"
    test_fn = tmp_path / "test.tsv"
    test_fn.write_text("".join(TRAIN.read_text(encoding="utf-8").splitlines(keepends=True)[:40]), encoding="utf-8")
    flags = [*search_flags, "--test_fn", test_fn]
    search = subprocess.Popen([sys.executable, script, *map(str, flags)], cwd=ROOT, env=SCRIPT_ENV,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    study = tmp_path / ".searched.partial" / "hp_study.db"
    deadline = time.time() + 300
    # trial 0 finished, trial 1 under way with its values
    while trial_states(study) != ["COMPLETE", "RUNNING"] or not running_trial_has_values(study):
        assert search.poll() is None and time.time() < deadline, search.stderr.read()[-3000:]
        time.sleep(0.1)
    search.send_signal(signal.SIGTERM)
    stderr = search.communicate(timeout=60)[1]
    assert search.returncode == 143, stderr[-3000:]
    assert stderr.splitlines()[-1] == ("interrupted: stopped by SIGTERM; the search so far is kept in "
                                       f"{tmp_path / '.searched.partial'}: continue with --resume")
    assert not model_fn.exists()
    with pytest.raises(UserError, match="add --resume"):  # a rerun without --resume is refused
        check_output(model_fn, resume=False)

    resumed = run_script(script, *flags, "--resume")
    assert "continuing: 1 trials finished" in resumed.stderr and "***** trial 0" not in resumed.stderr
    # trial 0 kept; trial 1, killed, failed and ran again as trial 2 with its values, pruned after one epoch
    assert [(row["trial"], row["state"], row["lr"], row["epochs"], row["retry_of"]) for row in trials_table(model_fn)
            ] == [("0", "complete", "0.003", "2", ""), ("1", "fail", "1e-06", "", ""), ("2", "pruned", "1e-06", "1", "1")]
    record = json.loads((model_fn / "training_args.json").read_text())
    search_record = record["hp_search"]
    assert search_record["best_trial"] == 0 and search_record["values"] == {"lr": 0.003, "n_epochs": 2}
    assert [search_record[key] for key in ("complete", "pruned", "failed", "epochs_run", "epochs_planned")] == [
        1, 1, 1, 3, 4]
    assert search_record["objective"] == "validation macro_f1" and search_record["storage"] == "hp_study.db"
    assert record["lr"] == 0.003 and record["model_fn"] == str(model_fn) and record["test_fn"] == str(test_fn)
    # the test set scored once, by the winner (the trials ran without it)
    metrics = json.loads((model_fn / "metrics.json").read_text())
    assert metrics["test"]["n_examples"] == 40 and metrics["valid"]["macro_f1"] == search_record["value"]
    assert "test: " in resumed.stdout and "hyperparameter search (hp_trials.tsv):" in resumed.stdout
    for name in ("hp_study.db", "hp_optimization_history.png", "hp_intermediate_values.png", "model.safetensors"):
        assert (model_fn / name).exists(), name
    assert sorted(path.name for path in tmp_path.iterdir()) == ["searched", "space.json", "test.tsv"]  # no partial
    # the winner's card: its search, its validation and the test set it alone was scored on
    card = (model_fn / "README.md").read_text()
    assert "### Hyperparameter search" in card and "trial 0, validation macro_f1" in card
    assert "| test | `test.tsv` |" in card and "split: test" in card
    # an ordinary checkpoint: the classifier classify_plm.py builds loads it (in this process: a script run
    # costs 4 s more of the suite)
    classifier = classifier_in_process(model_fn)
    prediction = classifier.predict([("Great value. Very happy with it.", None)])
    assert classifier.labels[prediction.label_ids[0][0]] == "positive"


@pytest.mark.slow  # the search and 1 trial (~12 s)
def test_search_with_hf_reports_each_evaluation(tmp_path, tiny_model):
    space = tmp_path / "space.json"
    space.write_text(json.dumps({"lr": 0.003, "n_epochs": 1}))
    model_fn = tmp_path / "searched"
    run_script("finetune_plm_hf.py", "--model_fn", model_fn, "--train_fn", TRAIN, "--pretrained_model_name",
               tiny_model, "--hp_search", 1, "--hp_space", space, "--eval_steps", 7)
    import optuna
    study = optuna.load_study(study_name=None, storage=f"sqlite:///{model_fn / 'hp_study.db'}")
    (trial,) = study.trials
    # 432 training rows, 14 steps an epoch: evaluations at steps 7 and 14, compared by step
    assert trial.state.name == "COMPLETE" and sorted(trial.intermediate_values) == [7, 14]
    assert trial.value == max(trial.intermediate_values.values()) and trial.user_attrs["epochs"] == 1.0
    assert json.loads((model_fn / "training_args.json").read_text())["hp_search"]["values"] == {"lr": 0.003,
                                                                                                "n_epochs": 1}


@pytest.mark.slow  # one script run (~5 s)
def test_bad_search_flags_are_one_line(tmp_path, search_flags, capsys):
    malformed = tmp_path / "space.json"
    malformed.write_text('{"lr": {"low": 1e-5, "high": 1e-4},}')
    result = run_script("finetune_plm_native.py", *search_flags, check=False)
    assert result.returncode == 2 and result.stderr.startswith(f"error: --hp_space {malformed}: not valid JSON")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["space.json"]  # nothing written
    with pytest.raises(SystemExit) as exit:
        training_parser("").parse_args(["--model_fn", "m", "--train_fn", "t.tsv", "--hp_search", "0"])
    assert exit.value.code == 2
    assert capsys.readouterr().err == ("error: argument --hp_search: 0 is out of range; expected a whole number at "
                                       "least 1 (see --help)\n")


@pytest.mark.parametrize("space, message", [
    ([1, 2], "expected a JSON object naming the flags"),
    ({"learning_rate": 0.1}, "'learning_rate' is not a flag a search sets"),
    ({"batch_size": {"choices": [16, 0]}}, "batch_size: 0 is out of range; expected a whole number at least 1"),
    ({"n_epochs": {"low": 2.5, "high": 4}}, "n_epochs: '2.5' is not a whole number"),
    ({"lr": {"low": 1e-3, "high": 1e-4}}, "lr: low (0.001) must be below high (0.0001)"),
    ({"weight_decay": {"low": 0, "high": 0.1, "log": True}}, "weight_decay: a log scale needs low above 0"),
    ({"lr": {"min": 1e-5, "max": 1e-4}}, 'lr: expected {"low": L, "high": H}'),
    ({"batch_size": [16, 32]}, 'a choice of values is {"choices": [...]}'),
    ({"warmup_ratio": True}, "warmup_ratio: true is not a value of this flag"),
])
def test_bad_space_file_names_the_file_and_the_key(tmp_path, space, message):
    from training.hp_search import read_space
    path = tmp_path / "space.json"
    path.write_text(json.dumps(space))
    with pytest.raises(UserError) as error:
        read_space(path)
    assert str(error.value).startswith(f"--hp_space {path}: ") and message in str(error.value), str(error.value)


def test_space_and_trial_flags():
    from training.hp_search import default_space, flags_given, trial_argv
    argv = ["--model_fn", "m", "--train_fn", "t.tsv", "--test_fn", "x.tsv", "--hp_search", "4", "--batch_size", "8",
            "--delimiter", "tab", "--no_group_by_length", "--extend_vocab", "--resume"]
    args = training_parser("").parse_args(argv)
    # the default space leaves out what the command line gives, lr around the model's default
    given = flags_given(argv)
    assert given == {"batch_size"}
    space = default_space(2e-4, given)
    assert space["lr"] == {"low": 5e-5, "high": 4e-4, "log": True} and "batch_size" not in space
    assert space["n_epochs"] == {"low": 2, "high": 5, "log": False}
    assert "n_epochs" not in default_space(2e-4, {"max_steps"})  # which replaces it
    # a trial gets every flag of the search (none lost) with its values, but no test set, resume or search flags
    flags = training_options(args).record
    trial = vars(training_parser("").parse_args(trial_argv(flags, {"lr": 1e-4, "n_epochs": 4}, "trials/trial-3")))
    expected = {**vars(args), "lr": 1e-4, "n_epochs": 4, "model_fn": "trials/trial-3", "test_fn": None,
                "resume": False, "hp_search": None}
    assert trial == expected
    with pytest.raises(SystemExit) as exit:  # --hp_space without --hp_search
        training_parser("").parse_args(["--model_fn", "m", "--train_fn", "t.tsv", "--hp_space", "s.json"])
    assert exit.value.code == 2


def test_search_refused_under_torchrun(monkeypatch):
    from training.hp_search import search
    monkeypatch.setenv("WORLD_SIZE", "2")
    args = training_parser("").parse_args(["--model_fn", "m", "--train_fn", "t.tsv", "--hp_search", "2"])
    with pytest.raises(UserError, match="--hp_search runs each trial as a process of its own.*--hp_storage URL"):
        search(training_options(args), "native", "finetune_plm_native.py")


def interrupted_search(model_fn, study_name="finetune_plm_native-0000"):
    """A partial directory as a killed search leaves it: its record, its study (a real Optuna SQLite
    storage with a finished trial) and that trial's model directory."""
    import optuna
    from checkpoint.run_dir import partial_dir
    partial = partial_dir(model_fn)
    (partial / "trials" / "trial-0").mkdir(parents=True)
    (partial / "trials" / "trial-0" / "training_args.json").write_text("{}")
    (partial / "hp_search.json").write_text(json.dumps({"storage": "hp_study.db", "study": study_name,
                                                        "space": SPACE}))
    study = optuna.create_study(storage=f"sqlite:///{partial / 'hp_study.db'}", study_name=study_name,
                                direction="maximize")
    study.add_trial(optuna.trial.create_trial(params={"lr": 0.003}, value=0.9, distributions={
        "lr": optuna.distributions.CategoricalDistribution([0.003, 1e-6])}))
    return partial


@pytest.mark.slow  # one script run (~4 s)
def test_damaged_study_is_one_line_naming_the_way_out(tmp_path, tiny_model):
    """Bytes written over a page of hp_study.db: a rerun and --resume both say, in one line, that the search
    cannot continue and how to start afresh (not to --resume), and remove nothing."""
    model_fn = tmp_path / "searched"
    partial = interrupted_search(model_fn)
    with sqlite3.connect(partial / "hp_study.db") as db:
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
        root = db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'trials'").fetchone()[0]
    db.close()
    with open(partial / "hp_study.db", "r+b") as f:  # the trials table's page
        f.seek((root - 1) * page_size)
        f.write(b"\xff" * page_size)
    before = sorted(path.relative_to(tmp_path) for path in tmp_path.rglob("*"))
    message = (f"{partial / 'hp_study.db'}: the study of the interrupted search of {model_fn} is damaged (database "
               f"disk image is malformed), so the search cannot continue: delete {partial} to start it afresh "
               f"({partial / 'trials' / 'trial-0'} holds the best finished trial's model: copy it out first to keep "
               "it)")
    result = run_script("finetune_plm_native.py", "--model_fn", model_fn, "--train_fn", TRAIN,
                        "--pretrained_model_name", tiny_model, "--hp_search", 2, "--resume", check=False)
    assert (result.returncode, result.stderr) == (2, f"error: {message}\n")  # no "continue with --resume" after it
    with pytest.raises(UserError) as refused:  # a rerun without --resume: the same (in process: the same check)
        check_output(model_fn, resume=False)
    assert str(refused.value) == message
    assert sorted(path.relative_to(tmp_path) for path in tmp_path.rglob("*")) == before


def test_study_cut_short_says_to_start_afresh_not_to_resume(tmp_path):
    """Decided: a study database cut short is damaged like one with a bad page. Its message said "continue with
    --resume", which failed the same way; now a rerun and --resume both name the directory to delete."""
    import os
    from checkpoint.run_dir import study_damage
    model_fn = tmp_path / "searched"
    partial = interrupted_search(model_fn)
    os.truncate(partial / "hp_study.db", (partial / "hp_study.db").stat().st_size // 2)
    assert study_damage(model_fn) == "database disk image is malformed"
    for resume in (False, True):
        with pytest.raises(UserError, match=r"is damaged \(database disk image is malformed\), so the search cannot "
                                            rf"continue: delete {partial} to start it afresh") as refused:
            check_output(model_fn, resume=resume)
        assert "--resume" not in str(refused.value)


def test_search_record_cut_short_is_written_again_from_the_study(tmp_path):
    """hp_search.json cut to `{`: --resume writes it again when the study it names is there (its name digests
    everything the record is checked for), else one line; never a JSONDecodeError."""
    from training.hp_search import read_search_file
    partial = interrupted_search(tmp_path / "searched")
    (partial / "hp_search.json").write_text("{")
    plan = {"storage": "hp_study.db", "study": "finetune_plm_native-0000", "space": SPACE,
            "url": f"sqlite:///{partial / 'hp_study.db'}", "shared": False}
    with pytest.raises(UserError, match=r"^--resume: .*hp_search.json cannot be read \(Expecting property name.*\), "
                                        r"and .*hp_study.db holds no study of this command's search: rerun the search "
                                        "with the flags it had, or delete .* to start afresh$"):
        read_search_file(partial, {**plan, "study": "finetune_plm_native-1111"})  # other flags: another study
    assert (partial / "hp_search.json").read_text() == "{"
    expected = {key: plan[key] for key in ("storage", "study", "space")}
    assert read_search_file(partial, plan) == expected
    assert json.loads((partial / "hp_search.json").read_text()) == expected


# decided: max_steps replaces n_epochs, so neither may silently override the other (the search refuses)
@pytest.mark.parametrize("space, argv, message", [
    ({"max_steps": {"choices": [10, 20]}}, ["--max_steps", "5"], "max_steps is in the space and --max_steps on the "
                                                                 "command line, which it would override"),
    ({"max_steps": 10, "lr": 1e-4}, ["--n_epochs", "2"], "max_steps is in the space and --n_epochs on the command "
                                                         "line"),
    ({"n_epochs": {"low": 1, "high": 3}}, ["--max_steps", "5"], "n_epochs is in the space, but max_steps "
                                                                "(--max_steps) replaces it"),
    ({"n_epochs": {"low": 1, "high": 3}, "max_steps": 10}, [], "n_epochs is in the space, but max_steps (in the "
                                                               "space) replaces it"),
])
def test_space_and_max_steps_never_override_each_other(tmp_path, space, argv, message):
    from training.hp_search import search
    path = tmp_path / "space.json"
    path.write_text(json.dumps(space))
    argv = ["--model_fn", str(tmp_path / "m"), "--train_fn", str(TRAIN), "--hp_search", "2", "--hp_space", str(path),
            *argv]
    args = training_parser("").parse_args(argv)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["finetune_plm_native.py", *argv])
        with pytest.raises(UserError) as refused:
            search(training_options(args), "native", "finetune_plm_native.py")
    assert str(refused.value).startswith(f"--hp_space {path}: {message}"), str(refused.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["space.json"]  # refused before anything is written


def test_a_sigterm_whose_exception_was_lost_still_stops_the_program():
    """Python ignores an exception raised inside a garbage-collection callback: a SIGTERM that lands in one must
    still stop the search (utils.errors.check_terminated, which utils.processes.wait_for_worker calls while it
    waits for a trial or a fold)."""
    import gc
    import os
    import weakref

    from utils import errors
    previous = signal.signal(signal.SIGTERM, errors._terminate)
    try:
        class Held:
            pass
        def callback(ref):  # the signal arrives, and its handler runs, inside the callback
            os.kill(os.getpid(), signal.SIGTERM)
            sum(range(10000))
        held = Held()
        reference = weakref.ref(held, callback)
        del held  # Python prints "Exception ignored in ..." and goes on
        gc.collect()
        assert reference() is None and errors._terminated
        with pytest.raises(errors.Terminated):
            errors.check_terminated()
    finally:
        signal.signal(signal.SIGTERM, previous)
        errors._terminated.clear()
