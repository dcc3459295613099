"""A trial of --hp_search as the trial sees it: the subprocess the search started finds its Optuna trial in
the environment (TRIAL_ENV), reports each evaluation's --best_metric to it (training.recorder), and ends
with PRUNED_EXIT when the pruner calls it hopeless. Apart from training/hp_search.py (the search that
starts trials) so that the recorder, which every run has, does not import the search. A fold of --cv is such
a subprocess too (FOLD_ENV, become_fold), started by training/cross_validation.py."""
import json
import os
import sys

from utils.log import log
from utils.processes import die_with_parent

TRIAL_ENV = "FINETUNE_PLM_HP_TRIAL"  # in a trial's environment: where its Optuna trial is (JSON)
PRUNED_EXIT = 3  # a trial's exit status when the pruner stopped it (2 is a user error, 1 a bug)
FOLD_ENV = "FINETUNE_PLM_CV_FOLD"  # in the environment of a fold (or --cv_final) that a --cv run started


def become_fold():
    """In a fold (or --cv_final) that a --cv run started: die with it (a fold without its run would train
    for nothing). Here, not in training/cross_validation.py, which imports training.prepare that calls it."""
    if os.environ.get(FOLD_ENV):
        die_with_parent()


def median_pruner(n_trials):
    """MedianPruner, not Hyperband: a search here is a handful of trials (8 in docs/accuracy.md), which
    Hyperband would split into brackets of two or three; the median of the finished trials at the same
    epoch judges a trial after its first epoch, once a quarter of the trials have finished (Optuna's
    default of 5 would leave 3 of 8 trials to prune)."""
    import optuna
    return optuna.pruners.MedianPruner(n_startup_trials=max(1, n_trials // 4), n_warmup_steps=0)


def open_trial():
    """This run's Optuna trial when a --hp_search runs it (TRIAL_ENV), else None."""
    where = os.environ.get(TRIAL_ENV)
    return TrialReporter(json.loads(where)) if where else None


class TrialReporter:
    """The trial a subprocess of --hp_search runs: each evaluation's score goes to the study, and a trial
    the pruner calls hopeless ends at once with PRUNED_EXIT (its model is not wanted)."""

    def __init__(self, where):
        import optuna
        die_with_parent()  # a trial without its search would train for nothing (it started us: start_worker)
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        study = optuna.load_study(study_name=where["study"], storage=where["storage"],
                                  pruner=median_pruner(where["n_trials"]))
        self.trial = optuna.trial.Trial(study, where["trial_id"])

    def report(self, score, step, epoch, by_steps):
        """One evaluation: `step` is where trials are compared (the epoch, or the step with --eval_steps)."""
        self.trial.report(float(score), step)
        self.trial.set_user_attr("epochs", epoch)
        if self.trial.should_prune():
            log.info(f"pruned: the finished trials' median at {'step' if by_steps else 'epoch'} {step} is better; "
                     "the search goes on")
            sys.exit(PRUNED_EXIT)
