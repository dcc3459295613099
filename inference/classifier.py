"""A classifier as every command that classifies sees it (classify_plm.py, serve_plm.py): the flags that
choose and tune it, defined once, and their typed values (ClassifierOptions); the base class both backends
share (inference/load.py picks the backend) and what it predicts (Prediction).

Importing this imports nothing heavy: torch and transformers come only with the torch backend."""
import dataclasses
from dataclasses import dataclass

from data_load.long_text import pool
from options.parser import add_batch_flags, add_model_flag, add_runtime_flags, int_at_least
from scoring.decision import choose_labels
from scoring.scores import probabilities_of

BACKEND_HELP = ("torch (default): PyTorch and transformers, on the CPU or CUDA. onnx: the model written by "
                "`export_plm.py --model_fn M` (M/model.onnx, or M/model.int8.onnx with --quantize int8), run by "
                "onnxruntime on the CPU without importing torch or transformers: a short input starts an order of "
                "magnitude faster (docs/benchmarks.md)")


def add_classifier_flags(parser, batch_size=128, max_batch_tokens=None):
    """--model_fn and the backend, precision and batching flags, as one group."""
    group = parser.add_argument_group("model and backend")
    add_model_flag(group)
    group.add_argument("--backend", choices=["torch", "onnx"], default="torch", help=BACKEND_HELP)
    group.add_argument("--quantize", choices=["none", "int8"], default="none",
                       help="int8 (CPU only; faster, tiny accuracy cost): with --backend torch, dynamic int8 "
                            "quantization of the Linear layers; with --backend onnx, the int8 model export_plm.py wrote")
    add_batch_flags(group, batch_size)
    group.add_argument("--max_batch_tokens", type=int_at_least(1), default=max_batch_tokens,
                       help="most tokens in one forward pass, padding included (texts x the longest): long texts go "
                            "in smaller passes, short ones in larger" + ("" if max_batch_tokens else "; default: no limit"))
    add_runtime_flags(group, only="torch backend only")
    return group


@dataclass(frozen=True)
class ClassifierOptions:
    """The classifier flags (add_classifier_flags) as typed values: what load_classifier and both backends
    read. Built once by the command from its parsed flags (from_flags); no defaults here, the parser's are
    the only ones."""
    model_fn: str
    backend: str  # torch or onnx
    quantize: str  # none or int8
    batch_size: int
    max_length: int | None  # None: as trained
    long_text: str | None  # None: as trained
    stride: int | None
    window_pooling: str | None
    max_batch_tokens: int | None
    device: str  # torch backend only
    precision: str

    @classmethod
    def from_flags(cls, flags):
        """From {flag: value}: the parsed flags (vars(args)) or file mode's job settings; other flags are not
        the classifier's and stay out."""
        return cls(**{field.name: flags[field.name] for field in dataclasses.fields(cls)})


@dataclass(frozen=True, eq=False)
class Prediction:
    """Classifier.predict's result, one row per item, in input order."""
    logits: object  # float32 NumPy array (items, labels), divided by the model's temperature (--calibrate)
    probabilities: object  # a sigmoid per label (multi-label), a softmax (single-label); regression: the number
    scores: list  # per item, the probabilities of its chosen labels (regression: [the number])
    label_ids: list  # per item, its chosen label ids, as classify_plm.py prints them (regression: [0])

    def rows(self, start, end):
        """Items start..end-1 alone (the server answers each request of a shared batch with its own rows)."""
        return Prediction(self.logits[start:end], self.probabilities[start:end], self.scores[start:end],
                          self.label_ids[start:end])


def length_batches(lengths, batch_size, max_tokens=None):
    """Index lists, one per forward pass: the texts sorted by length (little padding), at most batch_size
    a pass and, with max_tokens, at most that many padded tokens (texts x the longest)."""
    batch = []
    for i in sorted(range(len(lengths)), key=lengths.__getitem__):
        if batch and (len(batch) == batch_size or (max_tokens and (len(batch) + 1) * lengths[i] > max_tokens)):
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


class Classifier:
    """What both backends share: the saved model's record, and scores from logits. A backend sets
    `saved` (checkpoint.saved_model.SavedModel), `max_length`, `batch_size` and the long-text settings
    (set_long_text), and implements `logits`. Both are built from ClassifierOptions."""
    saved = None
    backend = None
    long_text, stride, window_pooling = "truncate", None, "mean"

    def set_long_text(self, options):
        """--long_text, --stride, --window_pooling (options: ClassifierOptions), each as trained unless given."""
        self.long_text, self.stride, self.window_pooling = self.saved.long_text_settings(
            options.long_text, options.stride, options.window_pooling, self.max_length)

    def pooled(self, window_logits, text_of_window, n_texts):
        """One row of logits per text: sliding windows' logits pooled (--window_pooling); else as they are."""
        if text_of_window is None:
            return window_logits
        return pool(window_logits, text_of_window, n_texts, self.window_pooling)

    @property
    def regression(self):
        return self.saved.regression

    @property
    def labels(self):
        return self.saved.labels

    @property
    def multi_label(self):
        return self.saved.multi_label

    @property
    def threshold(self):
        return self.saved.threshold

    @property
    def label_separator(self):
        return self.saved.label_separator

    @property
    def pairs(self):
        return self.saved.pairs

    def logits(self, items):
        """float32 (len(items), n_labels) logits of (text, pair) items, in input order; pair None for a
        single sentence. Calibrated: divided by the model's temperature (--calibrate) in both backends."""
        raise NotImplementedError

    def predict(self, items, top_k=None, threshold=None):
        """The Prediction of (text, pair) items: the probabilities a sigmoid per label for a multi-label model,
        else a softmax; the chosen labels as classify_plm.py prints them (scoring.decision.choose_labels;
        threshold None: the model's own). A regression model's one output is its prediction: the number
        stands for the probabilities and is the score of label 0."""
        logits = self.logits(items)
        if self.regression:
            return Prediction(logits, logits, logits[:, :1].tolist(), [[0] for _ in range(len(logits))])
        probabilities = probabilities_of(logits, self.multi_label)
        scores, ids = choose_labels(probabilities, self.multi_label, top_k,
                                    self.threshold if threshold is None else threshold)
        return Prediction(logits, probabilities, scores, ids)
