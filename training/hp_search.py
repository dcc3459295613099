"""Hyperparameter search: `--hp_search N` runs N trials of a trainer with Optuna and saves the best
trial's model as --model_fn.

The trainer script started with --hp_search is the search (search() below). It checks every flag and
the data once, as any run does (training.prepare, which also tokenizes them into the cache the trials
read), then runs each trial as a subprocess of the same script: the trial's values as flags, its own
--model_fn inside the partial directory, no --test_fn. Subprocesses keep trials apart: each has its own
locks, clean-ups, signal handlers and memory, and a trial that fails takes nothing else with it. A trial
finds its Optuna trial in the environment (TRIAL_ENV): training.recorder reports each evaluation's
--best_metric to it (training/trial.py), and a trial the pruner calls hopeless exits with PRUNED_EXIT.

The study is an Optuna RDB storage: SQLite in the partial directory, or the database --hp_storage names,
which several machines share. The partial directory of a search holds
  hp_search.json   the storage, study and space: a search to --resume (checkpoint.run_dir)
  hp_study.db      the study (SQLite)
  trials/trial-N   the best finished trial's model so far; every other trial's files go when it ends
At the end the best trial's model scores --test_fn once and gets the trials table (hp_trials.tsv),
Optuna's plots, a copy of the study and an "hp_search" record in training_args.json; then it becomes
--model_fn."""
import argparse
import csv
import hashlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import warnings
from pathlib import Path

from checkpoint.run_dir import SEARCH_FILE, STUDY_FILE, commit_run, partial_dir, start_run
from options.training_flags import DEFAULT_SPACE, SEARCHABLE, command_line, training_parser
from scoring.trackers import TRACKER_PARENT_ENV, Trackers
from training.trial import PRUNED_EXIT, TRIAL_ENV, median_pruner
from utils.errors import UserError, first_line, require
from utils.log import log
from utils.processes import start_worker, wait_for_worker

TRIALS_TABLE = "hp_trials.tsv"
TRIALS_DIR = "trials"
# --hp_storage: the search beats every minute while its trial runs; a trial without a beat for 3 minutes
# (its machine died) is marked failed by the next machine to start one, and runs again (retry)
HEARTBEAT_S, GRACE_S = 60, 180
MIN_TRIALS_FOR_IMPORTANCE = 4  # fewer finished trials say nothing about which flag matters
SPACE_EXAMPLE = '{"lr": {"low": 1e-5, "high": 1e-4, "log": true}, "batch_size": {"choices": [16, 32]}, "n_epochs": 3}'


def search(options, trainer_name, script):
    """The search: trials of `script` until --hp_search of them have finished (complete or pruned) in the
    study, then the best one this machine ran saved as --model_fn. options: the run's TrainingOptions."""
    require(["optuna"], "--hp_search", "pip install -r requirements/search.txt")
    from training.prepare import prepare
    from utils.runtime import distributed_context
    if distributed_context().world_size > 1:
        raise UserError("--hp_search runs each trial as a process of its own: start it without torchrun or accelerate "
                        "launch; to spread trials over machines, run the same command on each with --hp_storage URL")
    import optuna
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # our lines instead (and no traceback for a failed trial)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeats, plots
    hp_space = options.search.hp_space
    space = read_space(hp_space) if hp_space else None
    given = flags_given(sys.argv[1:])
    if space is not None:
        check_steps(f"--hp_space {hp_space}", space, given)
    if space is None and not default_space(1.0, given):
        raise UserError(f"--hp_search: the command line gives every flag of the default space "
                        f"({', '.join(DEFAULT_SPACE)}), which leaves nothing to search: give --hp_space FILE.json")
    run = prepare(options, trainer_name)  # every flag and the data checked once, tokenized into the trials' cache
    run.model = None  # each trial loads its own
    space = space or default_space(run.lr, given)
    study, plan = open_study(options, trainer_name, run, space)
    print_search_plan(options, trainer_name, study, plan)
    # --report_to: the search is a run of its own (its flags, the winner's scores); each trial's run joins it,
    # nested under it in MLflow and in its group in W&B (TensorBoard: each trial writes its own logs)
    trackers = Trackers([name for name in options.run.report_to if name != "tensorboard"], None,
                        f"{Path(options.run.model_fn).name}-{trainer_name}-search", options.record, kind="search")
    os.environ[TRACKER_PARENT_ENV] = json.dumps(trackers.ids)  # the trials are subprocesses: they inherit it
    best = run_trials(options, script, study, plan)
    if best is None:
        raise UserError(f"--hp_search: no trial this machine ran completed ({len(study.trials)} in the study), so there "
                        "is no model to save: run it again for more trials")
    save_best(options, run, study, plan, best, trackers)


def open_study(options, trainer_name, run, space):
    """(study, plan): the study created, or reopened (--resume; a shared one that other machines work on)."""
    import optuna
    from scoring.metrics import ALL_SCORES
    model_fn, n_trials, storage = options.run.model_fn, options.search.hp_search, options.search.hp_storage
    partial = partial_dir(model_fn)
    shared = storage is not None
    url = storage or f"sqlite:///{(partial / STUDY_FILE).resolve()}"
    # recorded: a shared storage's URL without its password; our own study by its file name, which moves with
    # the partial directory into the model directory
    plan = {"storage": without_password(url) if shared else STUDY_FILE,
            "study": study_name(trainer_name, run, space, options.evaluation.calibrate), "space": space, "url": url,
            "shared": shared}
    if options.run.resume:
        if not (partial / SEARCH_FILE).exists():
            raise UserError(f"--resume: {partial} holds an interrupted training run, not a search: resume it "
                            "without --hp_search, or delete it to start afresh")
        before = read_search_file(partial, plan)
        for key, what in (("space", "search space (--hp_space, or the flags a default space leaves out)"),
                          ("storage", "--hp_storage"), ("study", "--calibrate setting")):
            if before.get(key) != plan[key]:
                raise UserError(f"--resume: the interrupted search of {model_fn} had another {what}: rerun it "
                                f"as it was, or delete {partial} to start afresh")
    storage = open_storage(url, shared) if shared else None  # a database elsewhere: refused before anything is written
    start_run(model_fn, run.fingerprint)
    if not (partial / SEARCH_FILE).exists():
        public = {key: plan[key] for key in ("storage", "study", "space")}
        (partial / SEARCH_FILE).write_text(json.dumps(public, indent=2) + "\n")
    storage = storage or open_storage(url, shared)
    direction = "maximize" if ALL_SCORES[options.evaluation.best_metric].higher_is_better else "minimize"
    study = optuna.create_study(storage=storage, study_name=plan["study"], direction=direction, load_if_exists=True,
                                pruner=median_pruner(n_trials))
    # Seeded by --seed and the trials so far: a resumed search does not draw its first values again. On a
    # shared study each process draws its own (two machines starting together would draw the same).
    salt = int(hashlib.sha256(f"{socket.gethostname()}:{os.getpid()}".encode()).hexdigest()[:8], 16) if shared else 0
    study.sampler = optuna.samplers.TPESampler(seed=(options.schedule.seed + len(study.trials) + salt) % 2**32,
                                               n_startup_trials=random_trials(n_trials))
    if not shared:
        fail_interrupted(study)
    return study, plan


def read_search_file(partial, plan):
    """The interrupted search's record (hp_search.json). One that cannot be read (cut short by a full disk,
    overwritten) is written again from this command's plan when its storage holds this command's study: the
    study's name is a digest of everything the record is checked for, so nothing the search found is lost."""
    path = partial / SEARCH_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(record, dict):
            return record
        damage = "not a JSON object"
    except (OSError, ValueError) as error:  # UnicodeDecodeError included
        damage = first_line(error)
    import optuna
    own = partial / STUDY_FILE
    try:
        names = optuna.get_all_study_names(plan["url"]) if plan["shared"] or own.is_file() else []
    except Exception:  # an unreachable or damaged storage holds nothing this command can find
        names = []
    where = plan["storage"] if plan["shared"] else own
    if plan["study"] not in names:
        raise UserError(f"--resume: {path} cannot be read ({damage}), and {where} holds no study of "
                        "this command's search: rerun the search with the flags it had, or delete "
                        f"{partial} to start afresh")
    public = {key: plan[key] for key in ("storage", "study", "space")}
    log.warning(f"{path}: cannot be read ({damage}); written again from this command, whose study "
                f"{plan['study']} is in {where}")
    path.write_text(json.dumps(public, indent=2) + "\n")
    return public


def random_trials(n_trials):
    """TPE's first trials sample at random (Optuna's default: 10, all of a search of 8): half of them here."""
    return max(2, min(10, n_trials // 2))


def run_trials(options, script, study, plan):
    """Trials until --hp_search of them have finished or are running; the number of the best finished trial
    whose model is here, or None."""
    import optuna
    from optuna.trial import TrialState
    trials_dir = partial_dir(options.run.model_fn) / TRIALS_DIR
    trials_dir.mkdir(exist_ok=True)
    best = keep_best(study, trials_dir)  # --resume: what a killed trial left goes
    while True:
        if plan["shared"]:
            optuna.storages.fail_stale_trials(study)  # a machine that died: its trial runs again (retry)
        counted = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING))
        if len(counted) >= options.search.hp_search:
            return best
        study.optimize(lambda trial: run_trial(trial, options, script, plan, len(counted) + 1), n_trials=1)
        best = keep_best(study, trials_dir)


def run_trial(trial, options, script, plan, position):
    """Optuna's objective: one trial as a subprocess of the trainer script; its validation --best_metric."""
    import optuna
    values = {name: suggest(trial, name, spec) for name, spec in plan["space"].items()}
    trial.set_user_attr("host", socket.gethostname())
    n_trials = options.search.hp_search
    model_fn = partial_dir(options.run.model_fn) / TRIALS_DIR / f"trial-{trial.number}"
    log.info(f"\n***** trial {trial.number} ({position} of {n_trials}): {describe_values(values)} *****")
    where = {"storage": plan["url"], "study": plan["study"], "trial_id": trial._trial_id, "n_trials": n_trials}
    # the trial's report on stdout would come before the search's own: it goes to stderr with its log
    child = start_worker([str(script), *trial_argv(options.record, values, model_fn)],
                         env={TRIAL_ENV: json.dumps(where)}, stdin=subprocess.DEVNULL, stdout=sys.stderr)
    try:
        status = wait_for_worker(child)  # a SIGTERM whose exception was lost stops it too (utils.errors)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM (utils.errors): the trial runs again from its start
        child.kill()
        child.wait()
        retry(trial.study, trial)
        raise
    if status == PRUNED_EXIT:
        raise optuna.TrialPruned()
    if status != 0:
        how = f"was killed by {signal.Signals(-status).name}" if status < 0 else f"failed with exit status {status}"
        raise UserError(f"trial {trial.number} ({describe_values(values)}) {how} (its messages are above)")
    return json.loads((model_fn / "metrics.json").read_text())["valid"][options.evaluation.best_metric]


def retry(study, trial):
    """A trial stopped from outside (Ctrl-C, SIGTERM, a machine that died) runs again with its values."""
    if not any(other.user_attrs.get("retry_of") == trial.number for other in study.get_trials(deepcopy=False)):
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})


def fail_interrupted(study):
    """A study of our own at --resume: nothing else runs on it (this process holds --model_fn's lock), so
    a trial still running was killed with its search (SIGKILL, power loss): it fails, and runs again."""
    from optuna.trial import TrialState
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(trial.number, state=TrialState.FAIL)
        retry(study, trial)


def keep_best(study, trials_dir):
    """The best finished trial's model in trials_dir stays (an earlier trial wins a tie); everything
    else there goes (pruned, failed and killed trials' files, finished ones it beat). Its number, or None."""
    from optuna.study import StudyDirection
    from optuna.trial import TrialState
    from checkpoint.saved_model import TRAINING_ARGS
    sign = 1 if study.direction == StudyDirection.MAXIMIZE else -1
    values = {trial.number: trial.value for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}
    here = [number for number in values if (trials_dir / f"trial-{number}" / TRAINING_ARGS).exists()]
    best = min(here, key=lambda number: (-sign * values[number], number), default=None)
    for entry in trials_dir.iterdir():
        if entry.name != f"trial-{best}":
            shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
    return best


def save_best(options, run, study, plan, best, trackers=None):
    """The best trial's model scored on validation and, once, on --test_fn; its report, training_args.json,
    the trials table, plots and study copy written; then it becomes --model_fn."""
    from checkpoint.model_card import write_model_card
    from checkpoint.saved_model import TRAINING_ARGS, load_checkpoint
    from options.training_flags import flag_defaults
    from scoring.report import format_table, write_report
    from training.evaluation import evaluate_saved
    from training.finish import data_record
    model_fn = options.run.model_fn
    winner = partial_dir(model_fn) / TRIALS_DIR / f"trial-{best}"
    tokenizer, model, saved = load_checkpoint(winner, run.device)
    batch_size = options.schedule.batch_size * 2
    valid, test = (evaluate_saved(model, tokenizer, saved, dataset, batch_size, run.device, run.precision)
                   if dataset is not None else None for dataset in (run.valid_set, run.test_set))
    record = summary(options, study, plan, best)
    rows = trial_rows(options, study, plan)
    try:
        history = json.loads((winner / "history.json").read_text())
        write_report(winner, history, list(saved.labels), valid, test, n_errors=options.evaluation.n_errors)
        training_args = {**json.loads((winner / TRAINING_ARGS).read_text()), "model_fn": model_fn,
                         "test_fn": options.data.test_fn, "hp_space": options.search.hp_space,
                         "hp_storage": record["storage"],
                         "hp_search": record, "data": data_record(run.splits),  # the test set too, scored here
                         "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        (winner / TRAINING_ARGS).write_text(json.dumps(training_args, indent=2, ensure_ascii=False) + "\n")
        write_trials_table(winner / TRIALS_TABLE, rows)
        save_plots(study, winner, record["complete"], sum("value" not in spec for spec in plan["space"].values()))
        if not plan["shared"]:
            copy_sqlite(partial_dir(model_fn) / STUDY_FILE, winner / STUDY_FILE)
        write_model_card(winner, flag_defaults(), name=Path(model_fn).name)  # the winner's scores and search
    except OSError as error:
        raise UserError(f"{winner}: cannot write the model ({first_line(error)}); {model_fn} is unchanged") from None
    print(f"\nhyperparameter search ({TRIALS_TABLE}):\n{format_table(rows, list(rows[0]))}")
    saving = (f"; pruning saved {record['epochs_planned'] - record['epochs_run']:g} of {record['epochs_planned']:g} "
              "epochs" if record["epochs_planned"] else "")
    log.info(f"\nbest trial {best}: validation {options.evaluation.best_metric} {record['value']:.4f} with "
             f"{describe_values(record['values'])} ({record['complete']} complete, {record['pruned']} pruned{saving})")
    if "study_best_trial" in record:
        log.info(f"note: the study's best trial, {record['study_best_trial']}, ran in another search (on "
                 f"{study.best_trial.user_attrs.get('host')}), which saved its model")
    if trackers:  # the search's run: what it did, and the winner's scores under the names a single run uses
        steps = training_args.get("optimizer_steps", 0)
        trackers.log({"best_value": record["value"], "best_trial": best, "complete": record["complete"],
                      "pruned": record["pruned"], "failed": record["failed"]}, steps, prefix="search/")
        trackers.log_final(valid, test, steps)
    commit_run(model_fn, source=winner)
    log.info(f"\nsaved {model_fn}")
    if trackers:
        trackers.close()


def summary(options, study, plan, best):
    """training_args.json's "hp_search": which trial won with which values, and what the search did."""
    from optuna.trial import TrialState
    n_trials, seed = options.search.hp_search, options.schedule.seed
    trials = study.get_trials(deepcopy=False)
    by_number = {trial.number: trial for trial in trials}
    finished = [trial for trial in trials if trial.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    planned = None if "max_steps" in plan["space"] or options.schedule.max_steps else sum(
        trial_values(trial, plan["space"]).get("n_epochs", options.schedule.n_epochs) for trial in finished)
    record = {
        "trials": n_trials, **{key: sum(trial.state == state for trial in trials) for key, state in
                                     (("complete", TrialState.COMPLETE), ("pruned", TrialState.PRUNED),
                                      ("failed", TrialState.FAIL))},
        "best_trial": best, "values": trial_values(by_number[best], plan["space"]),
        "objective": f"validation {options.evaluation.best_metric}", "direction": study.direction.name.lower(),
        "value": by_number[best].value, "space": plan["space"],
        "sampler": f"TPE, seed {seed}, the first {random_trials(n_trials)} trials at random",
        "pruner": f"median, from {max(1, n_trials // 4)} finished trials on",
        "storage": plan["storage"], "study": plan["study"],
        "epochs_run": sum(trial.user_attrs.get("epochs", 0) for trial in finished), "epochs_planned": planned,
        "seconds": round(sum(trial.duration.total_seconds() for trial in finished)),
    }
    if study.best_trial.number != best:
        record["study_best_trial"] = study.best_trial.number
    return record


def trial_values(trial, space):
    """The flag values a trial ran with (the space's fixed ones included)."""
    return {name: trial.params.get(name, spec.get("value")) for name, spec in space.items()}


def trial_rows(options, study, plan):
    """The trials table: each trial's state, score (a pruned one's best before it stopped), values, epochs
    trained and seconds."""
    sampled = [name for name, spec in plan["space"].items() if "value" not in spec]
    trials = study.get_trials(deepcopy=False)
    hosts = {trial.user_attrs.get("host") for trial in trials}
    pick = max if study.direction.name == "MAXIMIZE" else min
    rows = []
    for trial in trials:
        score = trial.value if trial.value is not None else pick(trial.intermediate_values.values(), default="")
        rows.append({"trial": trial.number, "state": trial.state.name.lower(), options.evaluation.best_metric: score,
                     **{name: trial.params.get(name, "") for name in sampled},
                     "epochs": trial.user_attrs.get("epochs", ""),
                     "seconds": round(trial.duration.total_seconds()) if trial.duration else "",
                     "retry_of": trial.user_attrs.get("retry_of", ""),
                     **({"host": trial.user_attrs.get("host", "")} if len(hosts) > 1 else {})})
    return rows


def write_trials_table(path, rows):
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def save_plots(study, directory, n_complete, n_sampled):
    """Optuna's matplotlib plots: the optimization history, each trial's evaluations, and which flags
    mattered (with enough finished trials and more than one flag searched)."""
    from optuna.visualization import matplotlib as plots

    from scoring.report import _pyplot
    plt = _pyplot()  # headless
    drawn = {"hp_optimization_history.png": plots.plot_optimization_history,
             "hp_intermediate_values.png": plots.plot_intermediate_values}
    if n_complete >= MIN_TRIALS_FOR_IMPORTANCE and n_sampled > 1:
        drawn["hp_param_importances.png"] = plots.plot_param_importances
    for name, plot in drawn.items():
        try:
            axes = plot(study)
        except Exception as error:  # a plot is a bonus: a study it cannot draw does not lose the model
            log.warning(f"{name}: not drawn ({first_line(error)})")
            continue
        axes.figure.savefig(directory / name, bbox_inches="tight", dpi=100)
        plt.close(axes.figure)


def copy_sqlite(source, target):
    """A consistent copy of an SQLite database (its backup API), readable once the search has ended."""
    source_db, target_db = sqlite3.connect(source), sqlite3.connect(target)
    try:
        source_db.backup(target_db)
    finally:
        source_db.close()
        target_db.close()


# The space: read, checked and described

def read_space(path):
    """--hp_space: every key a searchable flag, every value checked by the flag's own type (options.training_flags), so
    a bad file is one line naming the file and the key."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise UserError(f"--hp_space {path}: cannot read it ({error.strerror})") from None
    try:
        raw = json.loads(data)
    except ValueError as error:  # UnicodeDecodeError included
        raise UserError(f"--hp_space {path}: not valid JSON ({first_line(error)}); expected e.g. {SPACE_EXAMPLE}") from None
    if not isinstance(raw, dict) or not raw:
        raise UserError(f"--hp_space {path}: expected a JSON object naming the flags to search, e.g. {SPACE_EXAMPLE}")
    return checked_space(f"--hp_space {path}", raw)


def check_steps(where, space, given):
    """max_steps replaces n_epochs (as --max_steps replaces --n_epochs): a space that sets max_steps beside
    --max_steps, or n_epochs beside a max_steps, would have one silently override the other."""
    if "max_steps" in space and given & {"max_steps", "n_epochs"}:
        flag = "--max_steps" if "max_steps" in given else "--n_epochs"
        raise UserError(f"{where}: max_steps is in the space and {flag} on the command line, which it would "
                        f"override: give the number of steps in one place (drop {flag}, or max_steps from the space)")
    if "n_epochs" in space and ("max_steps" in space or "max_steps" in given):
        steps = "in the space" if "max_steps" in space else "--max_steps"
        raise UserError(f"{where}: n_epochs is in the space, but max_steps ({steps}) replaces it, so every trial "
                        "would run the same steps: drop n_epochs from the space")


def default_space(lr, given):
    """DEFAULT_SPACE without the flags the command line gives; lr around `lr` (--lr, or by model width)."""
    raw = {name: spec for name, spec in DEFAULT_SPACE.items() if name not in given}
    if "max_steps" in given:  # it replaces --n_epochs
        raw.pop("n_epochs", None)
    if "lr" in raw:
        raw["lr"] = {**raw["lr"], "low": lr * raw["lr"]["low"], "high": lr * raw["lr"]["high"]}
    return checked_space("the default space", raw)


def checked_space(where, raw):
    types = {action.dest: action.type for action in training_parser("")._actions if action.dest in SEARCHABLE}
    space = {}
    for name, spec in raw.items():
        if name not in types:
            raise UserError(f"{where}: {name!r} is not a flag a search sets; choose among {', '.join(SEARCHABLE)} "
                            "(give any other flag on the command line)")
        space[name] = dimension(f"{where}: {name}", spec, types[name])
    return space


def dimension(where, spec, parse):
    """One flag's range {"low", "high", "log"}, choices {"choices"} or fixed value {"value"}, its values
    parsed as on the command line."""
    def checked(value):
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            hint = ' (a choice of values is {"choices": [...]})' if isinstance(value, list) else ""
            raise UserError(f"{where}: {json.dumps(value)} is not a value of this flag{hint}")
        try:
            return parse(str(value))
        except argparse.ArgumentTypeError as error:
            raise UserError(f"{where}: {error}") from None
    if not isinstance(spec, dict):
        return {"value": checked(spec)}
    if set(spec) == {"choices"}:
        if not isinstance(spec["choices"], list) or not spec["choices"]:
            raise UserError(f'{where}: "choices" must be a non-empty list')
        return {"choices": [checked(value) for value in spec["choices"]]}
    if {"low", "high"} <= set(spec) <= {"low", "high", "log"}:
        low, high, log_scale = checked(spec["low"]), checked(spec["high"]), spec.get("log", False)
        if not isinstance(log_scale, bool):
            raise UserError(f'{where}: "log" must be true or false')
        if low >= high:
            raise UserError(f"{where}: low ({low}) must be below high ({high})")
        if log_scale and low <= 0:
            raise UserError(f"{where}: a log scale needs low above 0")
        return {"low": low, "high": high, "log": log_scale}
    raise UserError(f'{where}: expected {{"low": L, "high": H}} (and "log": true for a log scale), '
                    f'{{"choices": [...]}} or one value; found {json.dumps(spec)[:80]}')


def suggest(trial, name, spec):
    if "value" in spec:
        return spec["value"]
    if "choices" in spec:
        return trial.suggest_categorical(name, spec["choices"])
    if isinstance(spec["low"], int):  # the flag's type made it an int
        return trial.suggest_int(name, spec["low"], spec["high"], log=spec["log"])
    return trial.suggest_float(name, spec["low"], spec["high"], log=spec["log"])


def describe(name, spec):
    if "value" in spec:
        return f"{name} = {spec['value']:g}"
    if "choices" in spec:
        return f"{name} one of {', '.join(f'{value:g}' for value in spec['choices'])}"
    return f"{name} {spec['low']:g} to {spec['high']:g}" + (" (log scale)" if spec["log"] else "")


def describe_values(values):
    return ", ".join(f"{name} {value:.3g}" if isinstance(value, float) else f"{name} {value}"
                     for name, value in values.items())


def flags_given(argv):
    """The searchable flags the command line gives: a default space leaves them as given."""
    parser = training_parser("")
    unset = object()
    parser.set_defaults(**dict.fromkeys(SEARCHABLE, unset))
    parsed = parser.parse_args(argv)
    return {name for name in SEARCHABLE if getattr(parsed, name) is not unset}


def trial_argv(flags, values, model_fn):
    """One trial's flags: this run's (`flags`, {flag: value}: TrainingOptions.record) with the trial's values,
    its own --model_fn, and no --test_fn, --resume or search flags. Every flag whose value is not its default
    is passed on, so none is lost."""
    # not the config file either (the trial gets every value as a flag; the file would give it the search's
    # --hp_search and --test_fn back), nor --push_to_hub (the search pushes its winner)
    return command_line({**flags, **values, "model_fn": str(model_fn), "test_fn": None, "resume": False,
                         "hp_search": None, "hp_space": None, "hp_storage": None, "config": None,
                         "push_to_hub": None, "hub_private": False})


def study_name(trainer_name, run, space, calibrate=False):
    """The same command names the same study (machines sharing --hp_storage join it), another search another
    study: named after what shapes the trials, the trainer, flags, data (by content, not path), labels, space,
    and --calibrate (which a resumed single run may change, but a trial's score and saved model depend on)."""
    paths = ("train_fn", "valid_fn", "label_names_fn", "hp_space")
    flags = {key: value for key, value in run.fingerprint["flags"].items() if key not in paths}
    flags["calibrate"] = bool(calibrate)
    identity = json.dumps([trainer_name, flags, run.fingerprint["data"], run.fingerprint["labels"], space],
                          sort_keys=True, default=str)
    return f"finetune_plm_{trainer_name}-{hashlib.sha256(identity.encode()).hexdigest()[:8]}"


def open_storage(url, shared):
    import optuna
    try:
        if shared:
            return optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                                              heartbeat_stale_trial_callback=retry)
        return optuna.storages.RDBStorage(url)
    except Exception as error:  # SQLAlchemy's (a bad URL, a server that does not answer), ImportError (no driver)
        raise UserError(f"--hp_storage {without_password(url)}: cannot open it as an Optuna storage "
                        f"({first_line(error)})") from None


def without_password(url):
    """The storage URL as printed and recorded: a password in it becomes ***."""
    from sqlalchemy.engine import make_url
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL: the storage refuses it with its own message
        return url


def print_search_plan(options, trainer_name, study, plan):
    from optuna.trial import TrialState
    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    fixed = [describe(name, spec) for name, spec in plan["space"].items() if "value" in spec]
    n_trials, test_fn = options.search.hp_search, options.data.test_fn
    lines = [
        f"***** Hyperparameter search ({trainer_name}): {n_trials} trials *****",
        "  searched: " + "; ".join(describe(name, spec) for name, spec in plan["space"].items() if "value" not in spec),
        *(["  fixed: " + "; ".join(fixed)] if fixed else []),
        f"  objective: validation {options.evaluation.best_metric} ({study.direction.name.lower()}d; --best_metric)",
        f"  sampler: TPE, seed {options.schedule.seed}, the first {random_trials(n_trials)} trials at random",
        f"  pruner: median, at each {'evaluation (--eval_steps)' if options.evaluation.eval_steps else 'epoch'}, "
        f"from {max(1, n_trials // 4)} finished trials on",
        f"  storage: {without_password(plan['url'])}, study {plan['study']}",
        *([f"  test: {test_fn}, scored once, with the best trial"] if test_fn else []),
        *([f"  continuing: {len(finished)} trials finished"] if finished else []),
    ]
    log.info("\n".join(lines))

