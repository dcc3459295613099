"""Publishing a finished model on the Hugging Face Hub (--push_to_hub REPO_ID), through huggingface_hub.

The trainers and distill_plm.py check access before anything starts (utils.hub.check_push_access) and push
the model directory once it is in place; export_plm.py adds its ONNX files under onnx/, the layout
Sentence Transformers and Optimum read. A push that fails leaves the model saved where it was, and the error
line gives the command that pushes it later. Each push records the repository in hub.json, so that the
model card (checkpoint/model_card.py) names it in its title and usage, on the Hub and locally."""
import json
import os
import time
from pathlib import Path

from checkpoint.model_card import CARD, HUB_RECORD, ONNX_RECORD, read_json, write_model_card
from utils.errors import UserError, first_line
from utils.hub import hub_api, hub_endpoint
from utils.log import log

# What stays local: hidden files (locks, temporaries), the record of the push itself, and an evaluation's
# reports written elsewhere are never in the directory. TensorBoard logs (runs/) go, as transformers' Trainer
# pushes them: the Hub shows them in a "Training metrics" tab.
IGNORED = [".*", "**/.*", HUB_RECORD, "*.tmp"]
# export_plm.py's files on the Hub, in Sentence Transformers' layout (onnx/model.onnx; a quantized model's name
# says its weights: signed int8, quantized dynamically, not tuned for one CPU as their _avx512 files are)
HUB_ONNX_NAMES = {"model.onnx": "onnx/model.onnx", "model.int8.onnx": "onnx/model_qint8.onnx"}


def push_model(model_fn, repo_id, private, defaults):
    """Upload the whole model directory to repo_id (created when absent, private with `private`). The caller
    holds the model (a training run's own lock, or checkpoint.run_dir.hold_model)."""
    model_fn = Path(model_fn)
    api = hub_api()
    later = (f"hf upload {repo_id} {model_fn} . " + " ".join(f"--exclude '{pattern}'" for pattern in IGNORED)
             + (" --private" if private else ""))
    try:
        _record_push(model_fn, repo_id, private, defaults)
        # not private: the namespace's default visibility (an organization may make repositories private by default)
        url = api.create_repo(repo_id, private=True if private else None, exist_ok=True, repo_type="model")
        info = api.upload_folder(folder_path=str(model_fn), repo_id=repo_id, repo_type="model",
                                 ignore_patterns=IGNORED, commit_message=commit_message(model_fn))
    except Exception as error:  # the network, the Hub's answers, a full disk writing the card: the model stays
        raise UserError(f"--push_to_hub {repo_id}: the push failed ({first_line(error)}); the model is saved in "
                        f"{model_fn}: push it with `{later}`") from None
    log.info(f"pushed {model_fn} to {getattr(url, 'url', url)} ({getattr(info, 'commit_url', info)})")
    return info


def push_onnx(model_fn, repo_id, defaults):
    """Add export_plm.py's files to repo_id under onnx/, with the model card that now lists them. The repository
    must hold the model already (check_onnx_repo, before the export)."""
    from huggingface_hub import CommitOperationAdd
    model_fn = Path(model_fn)
    try:
        _record_push(model_fn, repo_id, None, defaults, onnx_files=list(HUB_ONNX_NAMES.values()))
        operations = [CommitOperationAdd(path_in_repo=target, path_or_fileobj=str(model_fn / name))
                      for name, target in HUB_ONNX_NAMES.items()]
        operations.append(CommitOperationAdd(path_in_repo=CARD, path_or_fileobj=str(model_fn / CARD)))
        info = hub_api().create_commit(repo_id, operations, repo_type="model",
                                       commit_message="finetune-plm: ONNX export (export_plm.py)")
    except Exception as error:
        raise UserError(f"--push_to_hub {repo_id}: the push failed ({first_line(error)}); the export is saved in "
                        f"{model_fn}: push it with `python export_plm.py --model_fn {model_fn} --push_to_hub "
                        f"{repo_id}`") from None
    log.info(f"pushed {', '.join(HUB_ONNX_NAMES.values())} to {hub_endpoint()}/{repo_id} ({info.commit_url})")
    return info


def check_onnx_repo(repo_id, model_fn):
    """export_plm.py --push_to_hub adds files to a model already on the Hub: one line before the export when the
    repository is not there."""
    try:
        exists = hub_api().repo_exists(repo_id, repo_type="model")
    except Exception as error:
        raise UserError(f"--push_to_hub {repo_id}: cannot ask the Hub about it ({first_line(error)}); nothing was "
                        "exported") from None
    if not exists:
        raise UserError(f"--push_to_hub {repo_id}: no such model on the Hub: push the model first (`hf upload "
                        f"{repo_id} {model_fn} . --exclude '.*'`, or train with --push_to_hub), then its ONNX files")


def commit_message(model_fn):
    record = read_json(Path(model_fn) / "training_args.json", {}) or {}
    return f"finetune-plm: {record.get('trainer', 'a')} run of {record.get('finished_at', 'unknown date')}"


def _record_push(model_fn, repo_id, private, defaults, onnx_files=None):
    """hub.json (where the model is published) and the card written again, naming the repository."""
    previous = read_json(model_fn / HUB_RECORD, {}) or {}
    record = {"repo_id": repo_id, "endpoint": hub_endpoint(),
              "private": previous.get("private") if private is None else private,
              "pushed_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    tmp = model_fn / f".{HUB_RECORD}.tmp"
    tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, model_fn / HUB_RECORD)
    if onnx_files:  # the card says where the ONNX files are on the Hub
        onnx = read_json(model_fn / ONNX_RECORD, {}) or {}
        onnx["hub_files"] = onnx_files
        tmp = model_fn / f".{ONNX_RECORD}.tmp"
        tmp.write_text(json.dumps(onnx, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, model_fn / ONNX_RECORD)
    write_model_card(model_fn, defaults)
