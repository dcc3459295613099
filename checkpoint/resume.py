"""What a --resume must share with the interrupted run: its fingerprint, written when a run starts
(checkpoint.run_dir.start_run) and checked when it is resumed."""
import json

from checkpoint.run_dir import RUN_FILE, partial_dir
from utils.errors import UserError

TRAINER_SCRIPTS = {"native": "finetune_plm_native.py", "hf": "finetune_plm_hf.py", "distill": "distill_plm.py"}


def run_fingerprint(flags, trainer, labels, world_size, data, ignore=("model_fn", "resume", "save_every",
                                                                       "save_total_limit", "n_errors", "log_dir",
                                                                       "test_fn", "device", "cache_dir",
                                                                       "preprocessing_num_workers", "calibrate", "cv_final",
                                                                       "hp_storage", "config", "report_to",
                                                                       "push_to_hub", "hub_private")):
    """What a resumed run must share with the interrupted one: the flags that shape training (`flags`:
    {flag: value}, every flag of the run as the command line gave it), the data (`data`: the training and
    validation sources by content, not name), the labels, the trainer and the process count."""
    flags = {key: value for key, value in flags.items() if key not in ignore}
    # a search or not, but not its trial count: a search resumed with a larger --hp_search runs more trials
    # (--hp_storage: hp_search.json holds it without a password; training/hp_search.py checks it)
    flags["hp_search"] = bool(flags.get("hp_search"))
    return {"trainer": trainer, "flags": flags, "data": data, "labels": labels, "world_size": world_size}


def check_resume_matches(model_fn, fingerprint):
    """--resume continues only the same run: otherwise the restored state does not fit (labels) or
    silently mixes two runs (data, batch size)."""
    path = partial_dir(model_fn) / RUN_FILE
    try:
        before = json.loads(path.read_text())
    except (OSError, ValueError):
        return  # a run interrupted before this check existed
    if before.get("trainer") != fingerprint["trainer"]:
        script = TRAINER_SCRIPTS.get(before.get("trainer"), f"finetune_plm_{before.get('trainer')}.py")
        raise UserError(f"--resume: the interrupted run of {model_fn} was started by {script}: resume it with "
                        "that script")
    # a flag added since the interrupted run started is missing from its record: at its default it matches
    flags_then = before.get("flags", {})
    changed = [f"--{key} ({flags_then.get(key)!r} then, {value!r} now)"
               for key, value in fingerprint["flags"].items()
               if flags_then.get(key) != value and (key in flags_then or value not in (None, False))]
    changed += [f"the contents of --{key}" for key, digest in fingerprint["data"].items()
                if before.get("data", {}).get(key) != digest]
    if before.get("labels") != fingerprint["labels"]:
        changed.append("the labels")
    if before.get("world_size") != fingerprint["world_size"]:
        changed.append(f"the number of processes ({before.get('world_size')} then, {fingerprint['world_size']} now)")
    if changed:
        raise UserError(f"--resume: this run differs from the interrupted one in {', '.join(changed)}: rerun with "
                        f"the same flags and data, or delete {partial_dir(model_fn)} to start afresh")
