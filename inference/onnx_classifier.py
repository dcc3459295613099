"""The torch-free classifier: a checkpoint's ONNX export run by onnxruntime on the CPU.

Imports onnxruntime, tokenizers and numpy only, never torch or transformers (a test checks), so a
one-line input is classified in well under a second and a container needs none of torch's 1 GB.
Reads from the checkpoint: the ONNX file written by export_plm.py, tokenizer.json (+
tokenizer_config.json), config.json (label names) and training_args.json (max_length, pairs)."""
import json
import os
from pathlib import Path

import numpy as np

from inference.decision import probabilities_of, stored_threshold
from utils.checkpoint import TRAINING_ARGS, check_checkpoint, check_label_names
from utils.errors import UserError, first_line
from utils.model import clamp_max_length, position_limit
from utils.tokens import FastTokenizer

ONNX_FILES = {"none": "model.onnx", "int8": "model.int8.onnx"}  # by --quantize


def load_session(path):
    """An onnxruntime session on the CPU. Threads: OMP_NUM_THREADS where set, as torch reads it (onnxruntime
    itself ignores it), else onnxruntime's default of one per physical core, which is also torch's."""
    import onnxruntime
    path = Path(path)
    options = onnxruntime.SessionOptions()
    threads = os.environ.get("OMP_NUM_THREADS", "")
    if threads.isdigit() and int(threads) > 0:
        options.intra_op_num_threads = int(threads)
    options.log_severity_level = 3  # errors only: its warnings about unused initializers are not the user's
    try:
        return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own Fail/InvalidProtobuf/... kinds
        raise UserError(f"{path}: cannot load the ONNX model (truncated or corrupt file?): {first_line(error)}; "
                        f"export it again with python export_plm.py --model_fn {path.parent}") from None


class OnnxClassifier:
    """Class probabilities for (text, pair) items, batched by length like the torch classifier."""

    def __init__(self, model_fn, quantize="none", max_length=None, batch_size=128):
        model_fn = check_checkpoint(model_fn, ("config.json", TRAINING_ARGS, "tokenizer.json"))
        check_label_names(model_fn / "config.json")  # the torch backend's check: one message for a gap
        path = model_fn / ONNX_FILES[quantize]
        if not path.exists():
            raise UserError(f"{model_fn}: no {path.name} (--backend onnx{' --quantize int8' * (quantize == 'int8')} "
                            f"runs an exported model): export it with python export_plm.py --model_fn {model_fn}")
        try:
            config = json.loads((model_fn / "config.json").read_text(encoding="utf-8"))
            training_args = json.loads((model_fn / TRAINING_ARGS).read_text(encoding="utf-8"))
            self.labels = [config["id2label"][str(i)] for i in range(len(config["id2label"]))]
            max_length = (clamp_max_length(max_length, position_limit(config)) if max_length
                          else training_args.get("max_length", 128))
            self.tokenizer = FastTokenizer(model_fn, max_length)
        except Exception as error:  # json, a missing id2label key and tokenizers each raise their own kinds
            raise UserError(f"{model_fn}: cannot load the checkpoint (truncated or corrupt file?): "
                            f"{first_line(error)}") from None
        self.multi_label = config.get("problem_type") == "multi_label_classification"
        self.threshold = stored_threshold(training_args, len(self.labels), model_fn) if self.multi_label else None
        self.label_separator = training_args.get("label_separator") or ","  # joins a multi-label prediction
        self.pairs = training_args.get("has_pairs", False)
        self.batch_size = batch_size
        self.session = load_session(path)
        self.input_names = [i.name for i in self.session.get_inputs()]

    def logits(self, arrays):
        """Logits of one padded batch (the arrays FastTokenizer.batch makes); only the inputs the graph has."""
        return self.session.run(["logits"], {name: arrays[name] for name in self.input_names})[0]

    def probabilities(self, items):
        """float32 (len(items), n_labels) probabilities in input order (a sigmoid per label for a
        multi-label model, else a softmax)."""
        ids, type_ids = self.tokenizer.encode(items)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        probabilities = np.empty((len(ids), len(self.labels)), dtype=np.float32)
        for start in range(0, len(order), self.batch_size):
            indices = order[start:start + self.batch_size]
            logits = self.logits(self.tokenizer.batch([ids[i] for i in indices], [type_ids[i] for i in indices]))
            probabilities[indices] = probabilities_of(logits, self.multi_label)
        return probabilities
