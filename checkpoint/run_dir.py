"""A run's output directory, written atomically: the lock on --model_fn, the hidden partial directory
a run works in, and the commit that moves the finished model into place.

A run works in a hidden sibling `.<name>.partial/` (TensorBoard logs, resumable states under
`resume/`), writes the model there at the end and only then renames it to `--model_fn`. A crash
never leaves a half-written model, and an existing model is replaced only by a complete one."""
import contextlib
import json
import os
import shutil
import sqlite3
from pathlib import Path

from checkpoint.saved_model import TRAINING_ARGS
from checkpoint.train_state import train_states
from utils.errors import UserError, at_exit, first_line, interrupts_deferred, on_failure
from utils.log import log
from utils.processes import close_lock, open_lock

RUN_FILE = "run.json"  # in the partial directory: what the interrupted run was, checked by --resume
SEARCH_FILE = "hp_search.json"  # in the partial directory of a hyperparameter search (training/hp_search.py)
STUDY_FILE = "hp_study.db"  # beside it: the search's own Optuna study (SQLite), unless --hp_storage names another
CV_FILE = "cv.json"  # in the partial directory of a --cv run (training/cross_validation.py)
CV_METRICS = "cv_metrics.json"  # what a finished --cv run writes, with or without a model (--cv_final)
# what makes a partial directory one to --resume, besides a training state: a search's, a cross-validation's plan
PLANS = {SEARCH_FILE: "the search so far is", CV_FILE: "the folds finished so far are"}


def partial_dir(model_fn):
    model_fn = Path(model_fn)
    return model_fn.parent / f".{model_fn.name}.partial"


def resume_dir(model_fn):
    return partial_dir(model_fn) / "resume"


def resumable(model_fn):
    """Whether the partial directory holds something --resume continues: a saved training state, or a
    hyperparameter search (its study and finished trials)."""
    return bool(train_states(resume_dir(model_fn))) or any((partial_dir(model_fn) / plan).exists() for plan in PLANS)


def lock_output(model_fn):
    """Hold --model_fn for this run: a second run on it refuses at once. The lock is an flock on
    `.<name>.lock` beside it, which the kernel drops if the run is killed. From here on, a run that
    fails removes what it created, except a resumable state, and says how to resume from that."""
    model_fn = Path(model_fn)
    created = _make_parents(model_fn.parent)
    try:
        fd, path = _take_lock(model_fn, "another run is writing this model now (it holds {path}): wait for it to "
                                        "finish, or choose another --model_fn")
    except UserError:
        _remove_empty(created)
        raise

    partial = partial_dir(model_fn)
    if partial.is_dir() and not resumable(model_fn):
        # an earlier run that died with nothing to resume from (killed before its first saved state, or a
        # bug): we hold the lock, so no run is using it, and keeping it would make both a rerun and
        # --resume refuse
        shutil.rmtree(partial, ignore_errors=True)
        log.warning(f"removed {partial}: an earlier run of {model_fn} stopped there with nothing to resume from")
    partial_was_there = partial.exists()  # an earlier run's: not this run's to remove

    def release():
        path.unlink(missing_ok=True)  # before closing: nobody can lock the file we remove
        close_lock(fd)
        _remove_empty(created)

    def clean_up_failed_run():
        """The partial directory goes, unless it holds a resumable state: then it stays, and the
        note says so."""
        partial = partial_dir(model_fn)
        if (partial / SEARCH_FILE).exists():
            # a damaged study cannot be continued: the error says what to do instead
            return None if study_damage(model_fn) else f"the search so far is kept in {partial}: continue with --resume"
        if (partial / CV_FILE).exists():
            return f"the folds finished so far are kept in {partial}: continue with --resume"
        if partial.is_dir() and train_states(resume_dir(model_fn)):
            return f"the resumable state in {resume_dir(model_fn)} is kept: continue with --resume"
        if not partial_was_there:
            shutil.rmtree(partial, ignore_errors=True)
        return None

    at_exit(release)
    on_failure(clean_up_failed_run)


@contextlib.contextmanager
def hold_model(model_fn, what):
    """Hold a finished model while `what` (e.g. "export_plm.py") reads it and writes beside it: no training
    run can commit a new model into the directory meanwhile, and none starts."""
    fd, path = _take_lock(Path(model_fn), "a training run is writing this model now (it holds {path}): run "
                                          f"{what} once it has finished")
    try:
        yield
    finally:
        path.unlink(missing_ok=True)  # before closing: nobody can lock the file we remove
        close_lock(fd)


def _take_lock(model_fn, busy):
    """(descriptor, path) of the flock'ed `.<name>.lock` beside model_fn; `busy` (formatted with the
    path) says what to do when another process holds it."""
    path = model_fn.parent / f".{model_fn.name}.lock"
    while True:
        try:
            fd = open_lock(path, blocking=False)
        except BlockingIOError:
            raise UserError(f"--model_fn {model_fn}: " + busy.format(path=path)) from None
        except OSError as error:
            raise UserError(f"--model_fn {model_fn}: cannot write in {model_fn.parent} ({error.strerror}): "
                            "choose a directory you can write to") from None
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd, path  # still the file on disk, not one a finishing run just removed
        except FileNotFoundError:
            pass
        close_lock(fd)


def _make_parents(directory):
    """Create missing parent directories; returns the ones created, deepest first."""
    missing = []
    for parent in [directory, *directory.parents]:
        if parent.is_dir():
            break
        if parent.exists():
            raise UserError(f"--model_fn: {parent} is a file, not a directory: choose another --model_fn")
        missing.append(parent)
    try:
        for parent in reversed(missing):
            parent.mkdir()
    except OSError as error:
        _remove_empty(missing)
        raise UserError(f"--model_fn: cannot create {error.filename} ({error.strerror}): "
                        "choose a directory you can write to") from None
    return missing


def _remove_empty(directories):
    for directory in directories:
        try:
            directory.rmdir()
        except OSError:
            break


def check_inputs_kept(model_fn, inputs):
    """Refuse an input that the finished run would destroy: commit_run replaces --model_fn's whole directory
    (exports included), so a model the run starts from (--pretrained_model_name, --teacher_fn) or a file it
    reads that is --model_fn or inside it would be lost. inputs: {flag: path or None}; hub ids and paths
    that do not exist are nothing to lose."""
    target = Path(model_fn).resolve()
    for flag, path in inputs.items():
        if path is None or not Path(path).exists():
            continue
        if Path(path).resolve().is_relative_to(target):
            what = "is" if Path(path).resolve() == target else "holds"
            raise UserError(f"--model_fn {model_fn}: the finished run replaces this directory, which {what} {flag} "
                            f"{path}: choose another --model_fn")


def check_output(model_fn, resume):
    """Refuse, before anything is written, to clobber what is not ours or to drop an unfinished run."""
    model_fn, partial = Path(model_fn), partial_dir(model_fn)
    old = model_fn.parent / f".{model_fn.name}.old"
    if old.is_dir() and not model_fn.exists():  # a crash between commit_run's two renames
        os.replace(old, model_fn)
        log.warning(f"restored {model_fn} from {old} (an earlier run stopped while replacing it)")
    if model_fn.exists() and not (model_fn / TRAINING_ARGS).exists() and not (model_fn / CV_METRICS).exists() and (
            not model_fn.is_dir() or any(model_fn.iterdir())):
        raise UserError(f"{model_fn}: exists and is not a model written by this tool; "
                        "refusing to replace it: choose another --model_fn")
    if resume and not ((partial / "resume").is_dir() or any((partial / plan).exists() for plan in PLANS)):
        raise UserError(f"--resume: no interrupted run of {model_fn} to continue (no {partial}/resume)")
    # a partial directory with nothing to resume from is not refused: rank 0's lock_output removes it (the
    # other processes of a distributed run check before or after it does)
    damage = study_damage(model_fn)
    if damage:  # neither a rerun nor --resume can go on from it: one way out, the same for both
        # the search keeps one finished trial's model, its best (training/hp_search.py keep_best)
        best = [trial for trial in sorted((partial / "trials").glob("trial-*")) if (trial / TRAINING_ARGS).exists()]
        keep = f" ({best[0]} holds the best finished trial's model: copy it out first to keep it)" if best else ""
        raise UserError(f"{partial / STUDY_FILE}: the study of the interrupted search of {model_fn} is damaged "
                        f"({damage}), so the search cannot continue: delete {partial} to start it afresh{keep}")
    if not resume and partial.exists() and resumable(model_fn):
        raise UserError(f"{partial}: an interrupted run of {model_fn} is there: "
                        f"add --resume to continue it, or delete that directory to start afresh")


def study_damage(model_fn):
    """Why the study of an interrupted search in the partial directory cannot be read (a damaged page, a file
    cut short), or None (no search, a study kept elsewhere with --hp_storage, or a sound one). SQLite's own
    check of every page; opened for writing, as Optuna opens it, so that a killed writer's journal is rolled
    back rather than mistaken for damage."""
    partial = partial_dir(model_fn)
    study = partial / STUDY_FILE
    if not (partial / SEARCH_FILE).exists() or not study.is_file():
        return None
    try:
        db = sqlite3.connect(study, timeout=10)
        try:
            found = db.execute("PRAGMA quick_check").fetchone()[0]
        finally:
            db.close()
    except sqlite3.Error as error:
        return first_line(error)
    return None if found == "ok" else first_line(found)


def start_run(model_fn, fingerprint):
    """The partial directory, with the fingerprint a later --resume is checked against."""
    partial = partial_dir(model_fn)
    partial.mkdir(parents=True, exist_ok=True)
    if not (partial / RUN_FILE).exists():
        (partial / RUN_FILE).write_text(json.dumps(fingerprint, indent=2, ensure_ascii=False) + "\n")
    return partial


def commit_run(model_fn, source=None):
    """Move the finished partial directory into place, or `source`, the finished model inside it that a
    hyperparameter search chose (the rest of the partial directory then goes); the old model goes only
    once the new one is there. Ctrl-C and SIGTERM wait until this is done, so they cannot split it."""
    model_fn, partial = Path(model_fn), partial_dir(model_fn)
    source = Path(source) if source else partial
    with interrupts_deferred():
        shutil.rmtree(partial / "resume", ignore_errors=True)
        (partial / RUN_FILE).unlink(missing_ok=True)
        if model_fn.exists():
            old = model_fn.parent / f".{model_fn.name}.old"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(model_fn, old)
            os.replace(source, model_fn)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(source, model_fn)
        if source != partial:
            shutil.rmtree(partial, ignore_errors=True)
