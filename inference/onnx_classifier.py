"""The torch-free classifier: a checkpoint's ONNX export run by onnxruntime on the CPU.

Imports onnxruntime, tokenizers and numpy only, never torch or transformers (a test checks), so a
one-line input is classified in well under a second and a container needs none of torch's 1 GB.
Reads from the checkpoint: the ONNX file written by export_plm.py, tokenizer.json (+
tokenizer_config.json) and the saved model's record (checkpoint/saved_model.py)."""
from pathlib import Path

import numpy as np

from checkpoint.saved_model import TRAINING_ARGS, SavedModel, weights_digest
from data_load.tokens import FastTokenizer
from inference.classifier import Classifier, length_batches
from utils.errors import UserError, first_line
from utils.log import log
from utils.runtime import threads_setting

ONNX_FILES = {"none": "model.onnx", "int8": "model.int8.onnx"}  # by --quantize
WEIGHTS_KEY = "finetune_plm.weights"  # ONNX metadata: checkpoint.saved_model.weights_digest of the exported weights
# ONNX metadata: the temperature (--calibrate) the graph divides its logits by, as the torch classifier does
TEMPERATURE_KEY = "finetune_plm.temperature"
# ONNX metadata of an int8 export: how its activations are quantized. Exports from before it was recorded
# scale each batch as a whole, so their labels can depend on the batch: the classifier says so
ACTIVATIONS_KEY, PER_TOKEN = "finetune_plm.int8_activations", "per_token"
# Graph rewrites of onnxruntime's that make these models slower: its CPU SkipLayerNormalization kernel (the residual
# Add and LayerNormalization fused) takes longer than the two nodes it replaces (docs/benchmarks.md, "Figures
# behind the code"). The numbers are the same up to float rounding.
SLOWER_FUSIONS = ["SkipLayerNormFusion"]


def load_session(path, disabled_fusions=SLOWER_FUSIONS):
    """An onnxruntime session on the CPU. Threads: OMP_NUM_THREADS where set, as torch reads it (onnxruntime
    itself ignores it), else onnxruntime's default of one per physical core, which is also torch's.
    disabled_fusions: onnxruntime's graph rewrites left out (a bench passes () to run a graph as sessions ran it
    before SLOWER_FUSIONS)."""
    import onnxruntime
    path = Path(path)
    options = onnxruntime.SessionOptions()
    threads = threads_setting()
    if threads:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3  # errors only: its warnings about unused initializers are not the user's
    try:
        return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"],
                                            disabled_optimizers=list(disabled_fusions))
    except Exception as error:  # onnxruntime raises its own Fail/InvalidProtobuf/... kinds
        raise UserError(f"{path}: cannot load the ONNX model (truncated or corrupt file?): {first_line(error)}; "
                        f"export it again with python export_plm.py --model_fn {path.parent}") from None


def check_export_is_current(session, path, saved):
    """The export must come from the weights in the directory now, and divide its logits by the temperature
    recorded now: a model retrained (or replaced) after its export would otherwise be served as the old one,
    silently."""
    model_fn = saved.path
    metadata = session.get_modelmeta().custom_metadata_map
    if float(metadata.get(TEMPERATURE_KEY, 1.0)) != saved.temperature:
        raise UserError(f"{path}: exported with temperature {metadata.get(TEMPERATURE_KEY, 1.0)}, but {model_fn} has "
                        f"{saved.temperature}: export again with python export_plm.py --model_fn {model_fn}")
    if path.name == ONNX_FILES["int8"] and metadata.get(ACTIVATIONS_KEY) != PER_TOKEN:
        log.warning(f"{path}: an int8 export that quantizes each batch as a whole, so a text's label can depend on "
                    f"the other texts in its batch: export again (python export_plm.py --model_fn {model_fn}) for "
                    "one that gives the same answer in any batch")
    current = weights_digest(model_fn)
    if not current:  # a torch-free copy without the weights (README): nothing to compare with
        return
    exported = metadata.get(WEIGHTS_KEY)
    if exported is None:
        raise UserError(f"{path}: written by an older export_plm.py, which did not record the weights it came from, "
                        f"so it may be older than the model: export again with python export_plm.py --model_fn {model_fn}")
    if exported != current:
        raise UserError(f"{path}: exported from other weights than {model_fn}'s (the model was trained again after "
                        f"the export): export again with python export_plm.py --model_fn {model_fn}")


class OnnxClassifier(Classifier):
    """Logits of (text, pair) items, batched by length like the torch classifier."""
    backend = "onnx"

    def __init__(self, options):
        """options: inference.classifier.ClassifierOptions (--device and --precision are the torch backend's)."""
        quantize = options.quantize
        self.saved = SavedModel.read(options.model_fn, ("config.json", TRAINING_ARGS, "tokenizer.json"))
        model_fn = self.saved.path
        path = model_fn / ONNX_FILES[quantize]
        if not path.exists():
            raise UserError(f"{model_fn}: no {path.name} (--backend onnx{' --quantize int8' * (quantize == 'int8')} "
                            f"runs an exported model): export it with python export_plm.py --model_fn {model_fn}")
        self.max_length = self.saved.input_length(options.max_length)
        try:
            self.tokenizer = FastTokenizer(model_fn, self.max_length)
        except Exception as error:  # json and tokenizers each raise their own kinds
            raise UserError(f"{model_fn}: cannot load the checkpoint (truncated or corrupt file?): "
                            f"{first_line(error)}") from None
        self.quantize = quantize
        self.batch_size, self.max_batch_tokens = options.batch_size, options.max_batch_tokens
        self.session = load_session(path)
        check_export_is_current(self.session, path, self.saved)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.set_long_text(options)

    def run(self, arrays):
        """Logits of one padded batch (the arrays FastTokenizer.batch makes); only the inputs the graph has."""
        return self.session.run(["logits"], {name: arrays[name] for name in self.input_names})[0]

    def logits(self, items):
        ids, type_ids, text_of_input = self.tokenizer.encode_inputs(items, self.long_text, self.stride)
        logits = np.empty((len(ids), len(self.labels)), dtype=np.float32)
        for indices in length_batches([len(row) for row in ids], self.batch_size, self.max_batch_tokens):
            logits[indices] = self.run(self.tokenizer.batch([ids[i] for i in indices], [type_ids[i] for i in indices]))
        return self.pooled(logits, text_of_input, len(items))
