"""--few_shot: the schedule for a small training set. The defaults (3 epochs of batches of 32) were tuned on
thousands of rows; on emotion with 16 examples a class (96 rows) they make 9 optimizer steps and score below
always predicting the majority class (issue 30: 0.257 and 0.230 on two draws, majority 0.348). The recipe
gives such a set enough small steps instead: batches of FEW_SHOT_BATCH, as many epochs as reach
FEW_SHOT_STEPS optimizer steps (at most FEW_SHOT_MAX_EPOCHS); the learning rate and warm-up share stay. Its figures against the
defaults and SetFit: docs/accuracy.md ("Few labels"), bench/few_shot.py.

Only the schedule flags left at their defaults change (a flag given on the command line is kept), so a
model trained with the recipe is saved, loaded, exported and served like any other; training_args.json
records the values used."""
import dataclasses
import math

# auto: the recipe when the training set has at most this many examples per class on average (SetFit's
# range, 8 to 64 a class); the bundled sample (216 a class) and the benches' 4,000-row emotion keep the defaults
FEW_SHOT_PER_CLASS = 64
FEW_SHOT_BATCH = 8
FEW_SHOT_STEPS = 200  # issue 30: 20 epochs of 8 on 96 rows (220 steps) scored 0.337 / 0.447 against 0.257 / 0.230
FEW_SHOT_MAX_EPOCHS = 50
RECIPE_FLAGS = ("n_epochs", "batch_size")


def is_few_shot(mode, n_train, n_classes, single_label=True):
    """Whether the recipe applies: --few_shot on, or auto and a small single-label training set (the recipe was
    measured on single-label corpora only; multi-label and regression runs keep their flags unless --few_shot on)."""
    return mode == "on" or (mode == "auto" and single_label and n_train <= FEW_SHOT_PER_CLASS * n_classes)


def few_shot_schedule(schedule, n_train, defaults):
    """ScheduleOptions with the recipe in the flags still at their parser defaults (`defaults`: {flag:
    default}); --max_steps, when given, keeps deciding the length."""
    changes = {}
    if schedule.batch_size == defaults["batch_size"]:
        changes["batch_size"] = FEW_SHOT_BATCH
    if schedule.n_epochs == defaults["n_epochs"] and not schedule.max_steps:
        batch = changes.get("batch_size", schedule.batch_size) * schedule.gradient_accumulation_steps
        steps_per_epoch = max(1, math.ceil(n_train / batch))
        changes["n_epochs"] = min(FEW_SHOT_MAX_EPOCHS, max(defaults["n_epochs"], math.ceil(FEW_SHOT_STEPS / steps_per_epoch)))
    return dataclasses.replace(schedule, **changes), changes
