"""Word attributions: why a saved model printed the label it printed, one number per word of the text.

Two methods, as practitioners know them from captum and transformers-interpret:

  integrated_gradients  (torch backend) captum's LayerIntegratedGradients on the word-embedding layer:
                        the gradients of the printed label's logit integrated along the straight line from a
                        baseline (the text's word pieces replaced by the padding token, its special tokens
                        kept, as in captum's BERT tutorial) to the text, --explain_steps points (10) of
                        captum's default Gauss-Legendre rule, several texts a pass. Completeness: a text's
                        attributions sum to its logit minus the baseline's logit, up to the integration's
                        error, which more steps shrink. Unit: logits.
  occlusion             (both backends, so the torch-free ONNX path explains too) each word removed in turn
                        (its word pieces left out of the input), every variant of every text in one
                        length-sorted batched pass; a word's attribution is the drop in the printed label's
                        probability when it is gone. Unit: probability (a regression model: its number).

Positive attributions push towards the printed label, negative ones away from it. Word pieces are summed
back into the words the user wrote (whitespace-separated runs of letters and digits, an apostrophe inside a
word kept, each punctuation mark or symbol a word of its own, each CJK ideograph a word as BERT's
tokenizer has it), in text order; a sentence pair's words are the text's followed by the pair's. A word
the model never saw (cut by --max_length or --long_text head_tail) gets 0.

A multi-label model (or --top_k K) explains each printed label; a regression model explains its number (the
output itself, in both methods); --long_text sliding explains each window and merges them into the text's
words as its windows' logits are pooled: with mean pooling a word's attribution is the mean over the windows
(occlusion: removed from every window holding it, the windows pooled again), with max pooling it is the
window whose logit the max took.

Imports nothing heavy: torch and captum only when integrated gradients run, so the ONNX path stays torch-free."""
import unicodedata
from dataclasses import dataclass

import numpy as np

from data_load.long_text import cap_characters, pool, windows
from data_load.tokens import CHARS_PER_TOKEN_CAP, FastTokenizer
from inference.classifier import length_batches
from options.parser import int_at_least
from scoring.scores import probabilities_of
from utils.errors import UserError, first_line, require

INTEGRATED_GRADIENTS, OCCLUSION = "integrated_gradients", "occlusion"
METHODS = (INTEGRATED_GRADIENTS, OCCLUSION)
# Integrated gradients' points on the path: 10 explains a corpus within the issue's 1/30 of plain classification's
# speed (each step is a forward and a backward pass; 15 and 20 missed it) and ranks the words as 15 and 20 do
# (comprehensiveness); more steps bring the attributions' sum closer to the logit difference (completeness), so
# raise --explain_steps when the sums matter. Figures: docs/benchmarks.md, "Explaining".
DEFAULT_STEPS = 10
# Texts explained at a time: occlusion holds a variant per word of each, so a chunk of 8,192 lines would
# hold some 150,000 token lists at once.
EXPLAIN_CHUNK = 256
# Padded tokens in one integrated-gradients pass, all steps counted (texts x steps x the longest): the
# forward and backward activations of MiniLM at this size take a few hundred MB.
IG_TOKENS = 16384
STRONGEST = 5  # evaluate_plm.py --explain: words listed for each wrong row in errors.tsv


def add_explain_flags(group, switch=True):
    """--explain (switch: classify_plm.py, evaluate_plm.py; the server explains per request), --explain_method
    and --explain_steps."""
    if switch:
        group.add_argument("--explain", action="store_true",
                           help="word attributions for the printed label(s): how much each word of the text pushed "
                                "the model towards it (README: Explain)")
    group.add_argument("--explain_method", choices=("auto", *METHODS), default=None,
                       help="integrated_gradients (torch backend; attributions in logits, summing to the logit's "
                            "difference to an all-padding baseline) or occlusion (either backend; each word removed "
                            "in turn, the drop in the label's probability). Default auto: integrated_gradients on "
                            "torch, occlusion on onnx and on a --quantize int8 torch model (no gradients there)")
    group.add_argument("--explain_steps", type=int_at_least(1), default=None,
                       help=f"integrated_gradients: points on the path from the baseline (default {DEFAULT_STEPS}; "
                            "more: closer to completeness, proportionally slower)")


def choose_method(method, backend, quantize="none"):
    """The method --explain_method names for this backend (auto: the default, occlusion also where captum is
    not installed), or one line saying why not."""
    gradients = backend == "torch" and quantize != "int8"
    if method in (None, "auto"):
        import importlib.util
        return INTEGRATED_GRADIENTS if gradients and importlib.util.find_spec("captum") else OCCLUSION
    if method == INTEGRATED_GRADIENTS and not gradients:
        why = ("--backend onnx runs a graph without gradients" if backend == "onnx"
               else "--quantize int8 layers have no gradients")
        raise UserError(f"--explain_method integrated_gradients: {why}; use --explain_method occlusion (or the "
                        "default), or --backend torch without --quantize int8")
    return method


@dataclass(frozen=True)
class ExplainOptions:
    """The explain flags as typed, settled values (the method resolved for the backend): what the command's
    Explainer, file mode's workers and its manifest read. Built once by the command (explain_options)."""
    method: str  # integrated_gradients or occlusion
    steps: int  # integrated gradients' points on the path (occlusion takes none; the default is kept)

    def settings(self):
        """As file mode's manifest records them: only when --explain is on, so that a manifest written without
        it (or before the flag existed) has none of them and resumes as it was."""
        return {"explain": True, "explain_method": self.method, "explain_steps": self.steps}


def explain_options(flags, backend, quantize="none", switch=True):
    """The explain flags of a command ({flag: value}, vars(args)), checked before any work: its ExplainOptions,
    or None when the command has the --explain switch and it is off. switch False: the server, which explains
    per request, with these as its defaults."""
    if switch and not flags["explain"]:
        for flag in ("explain_method", "explain_steps"):
            if flags[flag] is not None:
                raise UserError(f"--{flag}: only with --explain")
        return None
    method = choose_method(flags["explain_method"], backend, quantize)
    if flags["explain_steps"] is not None and method != INTEGRATED_GRADIENTS:
        raise UserError(f"--explain_steps: integrated_gradients takes steps, {method} does not; drop it or use "
                        "--explain_method integrated_gradients")
    if method == INTEGRATED_GRADIENTS:
        require(["captum"], "--explain_method integrated_gradients",
                "pip install -r requirements/explain.txt (make setup installs it), or use --explain_method occlusion")
    return ExplainOptions(method, flags["explain_steps"] or DEFAULT_STEPS)


# --- words -------------------------------------------------------------------------------------------

def _is_ideograph(char):
    code = ord(char)
    return (0x4E00 <= code <= 0x9FFF or 0x3400 <= code <= 0x4DBF or 0x20000 <= code <= 0x2A6DF
            or 0xF900 <= code <= 0xFAFF or 0x2F800 <= code <= 0x2FA1F)


def _is_mark(char):
    """Punctuation or a symbol: a word of its own (BERT's pre-tokenizer splits them off the same way)."""
    return unicodedata.category(char)[0] in "PS"


def word_spans(text):
    """[(start, end)] of the words of a text, in order. A word is a run of characters that are neither
    whitespace nor punctuation/symbols (letters, digits, combining marks); an apostrophe between two such
    characters stays inside (don't, l'eau); every other punctuation mark or symbol, and every CJK ideograph,
    is a word by itself. Whitespace belongs to no word, so the words with the whitespace between them are
    the text."""
    spans, start = [], None
    for i, char in enumerate(text):
        joins = (char in "'’" and start is not None and i + 1 < len(text)
                 and not _breaks(text[i + 1]))
        if char.isspace() or ((_is_mark(char) or _is_ideograph(char)) and not joins):
            if start is not None:
                spans.append((start, i))
                start = None
            if not char.isspace():
                spans.append((i, i + 1))
        elif start is None:
            start = i
    if start is not None:
        spans.append((start, len(text)))
    return spans


def _breaks(char):
    return char.isspace() or _is_mark(char) or _is_ideograph(char)


def _char_words(text, spans, first):
    """Each character's word index (first + position in spans), -1 for whitespace."""
    of = np.full(len(text) + 1, -1, dtype=np.int64)
    for j, (start, end) in enumerate(spans):
        of[start:end] = first + j
    return of


def _token_word(char_word, start, end):
    """The word a word piece belongs to: the word of its first character inside one (a byte-level BPE
    piece may begin with the space before its word); -1 for none (special tokens, pure whitespace)."""
    if end <= start:
        return -1
    inside = char_word[start:end]
    hits = inside[inside >= 0]
    return int(hits[0]) if len(hits) else -1


@dataclass
class Encoded:
    """One (text, pair) item as the model reads it: its words and its inputs (one, or the sliding windows),
    each input with the word of every token (-1: none)."""
    words: list  # word strings, the text's then the pair's
    inputs: list  # [(ids, type_ids, word_of_token)]


class WordEncoder:
    """Token ids as the classifier computes them (data_load.tokens.FastTokenizer, which export_plm.py checks
    against the transformers tokenizer; data_load.long_text for head_tail and sliding), with the word each
    token came from."""

    def __init__(self, model_fn, max_length, long_text="truncate", stride=None):
        try:
            self.fast = FastTokenizer(model_fn, max_length)
        except Exception as error:  # a checkpoint without tokenizer.json (a slow tokenizer's) has no offsets
            raise UserError(f"{model_fn}: --explain needs the fast tokenizer's tokenizer.json for word offsets "
                            f"({first_line(error)}); save the tokenizer with a fast (tokenizers) tokenizer") from None
        self.max_length, self.long_text, self.stride = max_length, long_text, stride

    def encode(self, text, pair=None):
        spans = word_spans(text)
        words = [text[s:e] for s, e in spans]
        char_word = _char_words(text, spans, 0)
        cap = self.max_length * CHARS_PER_TOKEN_CAP
        if pair is not None or self.long_text == "truncate":
            if pair is None:
                encoding = self.fast.tokenizer.encode(text[:cap])
                pair_word = None
            else:
                pair_spans = word_spans(pair)
                words += [pair[s:e] for s, e in pair_spans]
                pair_word = _char_words(pair, pair_spans, len(spans))
                encoding = self.fast.tokenizer.encode(text[:cap], pair[:cap])
            word_of = []
            for (start, end), special, sequence in zip(encoding.offsets, encoding.special_tokens_mask,
                                                       encoding.sequence_ids):
                of = pair_word if sequence == 1 else char_word
                word_of.append(-1 if special or of is None else _token_word(of, start, end))
            return Encoded(words, [(encoding.ids, encoding.type_ids, word_of)])
        capped = cap_characters(text, self.max_length, self.long_text, CHARS_PER_TOKEN_CAP)
        encoding = self.fast.untruncated.encode(capped)
        cut = len(capped) != len(text)  # head_tail of a very long text: its start, a space, its end

        def original(offset):
            return offset if not cut or offset <= cap else offset - (cap + 1) + (len(text) - cap)
        word_all = [-1 if special else _token_word(char_word, original(start), original(end))
                    for (start, end), special in zip(encoding.offsets, encoding.special_tokens_mask)]
        positions = list(range(len(encoding.ids)))
        inputs = []
        for kept, _ in windows(positions, encoding.type_ids, encoding.special_tokens_mask, self.max_length,
                               self.long_text, self.stride):
            inputs.append(([encoding.ids[p] for p in kept], [encoding.type_ids[p] for p in kept],
                           [word_all[p] for p in kept]))
        return Encoded(words, inputs)


# --- the explainer -----------------------------------------------------------------------------------

class Explainer:
    """Word attributions of (text, pair) items for the labels a classifier chose, on its backend.

    classifier: inference.classifier.Classifier (TorchClassifier or OnnxClassifier), or anything with the same
    `saved`, `backend`, `max_length`, long-text settings, `batch_size`, `max_batch_tokens` and `quantize` plus
    `model`, `device`, `autocast`, `tokenizer` (torch) or `run` (onnx)."""

    def __init__(self, classifier, method=None, steps=DEFAULT_STEPS):
        self.classifier = classifier
        self.method = choose_method(method, classifier.backend, getattr(classifier, "quantize", "none"))
        if steps < 1:
            raise UserError(f"--explain_steps {steps}: integrated gradients need at least 1 step")
        self.steps = steps
        self.saved = classifier.saved
        self.encoder = WordEncoder(self.saved.path, classifier.max_length, classifier.long_text, classifier.stride)
        self.batch_size = classifier.batch_size
        self.max_batch_tokens = classifier.max_batch_tokens
        self.gradients_ready = False
        if classifier.backend == "torch":
            self.uses_types = "token_type_ids" in classifier.tokenizer.model_input_names
            if self.method == INTEGRATED_GRADIENTS:
                self.prepare_gradients()  # now (a second) rather than in a server's first request

    def prepare_gradients(self):
        """captum imported, and the model's weights set to need no gradient: only the embedding layer's output
        needs one, and without the weights' gradients the backward pass does about half the work."""
        if self.gradients_ready:
            return
        require(["captum"], "--explain_method integrated_gradients",
                "pip install -r requirements/explain.txt (make setup installs it), or use occlusion")
        import captum.attr  # noqa: F401
        for parameter in self.classifier.model.parameters():
            parameter.requires_grad_(False)
        self.gradients_ready = True

    @property
    def methods(self):
        """The methods this backend can run (the server accepts these per request): integrated gradients on torch
        without --quantize int8, where captum is installed; occlusion everywhere."""
        import importlib.util
        gradients = (self.classifier.backend == "torch" and getattr(self.classifier, "quantize", "none") != "int8"
                     and importlib.util.find_spec("captum") is not None)
        return METHODS if gradients else (OCCLUSION,)

    def explain(self, items, label_ids, method=None):
        """For each (text, pair) item: ([word, ...], [[attribution per word] for each of its label ids]).
        label_ids: the labels to explain per item (Classifier.predict's chosen ids); a regression model's
        [0] is its number."""
        method = self.method if method is None else method
        out = []
        for start in range(0, len(items), EXPLAIN_CHUNK):
            chunk = items[start:start + EXPLAIN_CHUNK]
            encoded = [self.encoder.encode(text, pair) for text, pair in chunk]
            targets = [list(ids) for ids in label_ids[start:start + EXPLAIN_CHUNK]]
            run = self._integrated_gradients if method == INTEGRATED_GRADIENTS else self._occlusion
            attributions = run(encoded, targets)
            out += [(e.words, a) for e, a in zip(encoded, attributions)]
        return out

    def explain_pairs(self, items, label_ids, method=None):
        """explain() as [[[word, attribution], ...] per label] per item, attributions to 4 significant digits:
        the `words` of classify_plm.py's JSON and the server's answer."""
        return [[[[word, float(f"{value:.4g}")] for word, value in zip(words, row)] for row in rows]
                for words, rows in self.explain(items, label_ids, method)]

    # --- forward passes ------------------------------------------------------------------------------

    def _logits(self, inputs):
        """Calibrated logits of (ids, type_ids) inputs, in order, length-batched as the classifier batches."""
        logits = np.empty((len(inputs), len(self.saved.labels)), dtype=np.float32)
        tokenizer = self.encoder.fast
        for indices in length_batches([len(ids) for ids, _ in inputs], self.batch_size, self.max_batch_tokens):
            arrays = tokenizer.batch([inputs[i][0] for i in indices], [inputs[i][1] for i in indices])
            logits[indices] = self._forward(arrays)
        return logits

    def _forward(self, arrays):
        classifier = self.classifier
        if classifier.backend == "onnx":
            return classifier.run(arrays)  # the export divides by the temperature in its graph
        import torch
        names = ["input_ids", "attention_mask"] + (["token_type_ids"] if self.uses_types else [])
        with torch.inference_mode(), classifier.autocast:
            logits = classifier.model(**{name: torch.from_numpy(arrays[name]).to(classifier.device)
                                         for name in names}).logits.float().cpu().numpy()
        return logits / self.saved.temperature if self.saved.calibration else logits

    def _scores(self, logits):
        """What a word's removal changes: the probabilities (a sigmoid per label for multi-label), or a
        regression model's number."""
        return logits if self.saved.regression else probabilities_of(logits, self.saved.multi_label)

    # --- occlusion -----------------------------------------------------------------------------------

    def _occlusion(self, encoded, targets):
        inputs, owners = [], []  # owners[i]: (item, window, removed word or -1)
        for k, item in enumerate(encoded):
            for w, (ids, types, word_of) in enumerate(item.inputs):
                inputs.append((ids, types))
                owners.append((k, w, -1))
                for j in sorted({j for j in word_of if j >= 0}):
                    keep = [t for t, of in enumerate(word_of) if of != j]
                    inputs.append(([ids[t] for t in keep], [types[t] for t in keep]))
                    owners.append((k, w, j))
        logits = self._logits(inputs) if inputs else np.zeros((0, len(self.saved.labels)), np.float32)
        full, removed = {}, {}
        for (k, w, j), row in zip(owners, logits):
            if j < 0:
                full[k, w] = row
            else:
                removed.setdefault(k, {}).setdefault(j, {})[w] = row
        out = []
        for k, item in enumerate(encoded):
            n_windows = len(item.inputs)
            window_logits = np.stack([full[k, w] for w in range(n_windows)])
            base = self._scores(self._pooled(window_logits))[0]
            attributions = np.zeros((len(targets[k]), len(item.words)), dtype=np.float64)
            for j, rows in removed.get(k, {}).items():
                changed = window_logits.copy()
                for w, row in rows.items():
                    changed[w] = row
                without = self._scores(self._pooled(changed))[0]
                attributions[:, j] = [base[t] - without[t] for t in targets[k]]
            out.append(attributions)
        return out

    def _pooled(self, window_logits):
        """One text's logits (1, n_labels) from its windows', as the classifier pools them."""
        if len(window_logits) == 1:
            return window_logits
        return pool(window_logits, np.zeros(len(window_logits), dtype=np.int64), 1, self.classifier.window_pooling)

    # --- integrated gradients ------------------------------------------------------------------------

    def _integrated_gradients(self, encoded, targets):
        rows = []  # (item, window, label)
        for k, item in enumerate(encoded):
            for w in range(len(item.inputs)):
                rows += [(k, w, t) for t in targets[k]]
        token_attributions, _ = self.token_attributions(
            [encoded[k].inputs[w] for k, w, _ in rows], [t for _, _, t in rows])
        # sliding windows merge as their logits are pooled: the mean's share of each window, or the window the
        # max took (its logit is the text's)
        weights = {}
        for k, item in enumerate(encoded):
            n_windows = len(item.inputs)
            if n_windows == 1:
                continue
            if self.classifier.window_pooling == "max":
                window_logits = self._logits([(ids, types) for ids, types, _ in item.inputs])
                for t in targets[k]:
                    best = int(np.argmax(window_logits[:, t]))
                    weights.update({(k, w, t): float(w == best) for w in range(n_windows)})
            else:
                weights.update({(k, w, t): 1 / n_windows for w in range(n_windows) for t in targets[k]})
        out = [np.zeros((len(targets[k]), len(item.words)), dtype=np.float64) for k, item in enumerate(encoded)]
        for (k, w, t), values in zip(rows, token_attributions):
            weight = weights.get((k, w, t), 1.0)
            row = out[k][targets[k].index(t)]
            for value, j in zip(values, encoded[k].inputs[w][2]):
                if j >= 0:
                    row[j] += weight * value
        return out

    def token_attributions(self, inputs, labels, with_delta=False):
        """Integrated gradients of (ids, type_ids, word_of) inputs, each for its label's logit (a regression
        model: its output): ([per-token attributions], [convergence delta: the attributions' sum minus the
        logit's difference to the baseline; with_delta only, as it costs two more forward passes]), in order.
        Inputs of similar length share a pass of at most IG_TOKENS padded tokens, all steps counted."""
        import torch
        self.prepare_gradients()
        from captum.attr import LayerIntegratedGradients

        classifier = self.classifier
        model, device = classifier.model, classifier.device
        tokenizer = self.encoder.fast
        pad_id = tokenizer.pad_id
        temperature = self.saved.temperature if self.saved.calibration else 1.0

        def forward(input_ids, attention_mask, token_type_ids):
            extra = {"token_type_ids": token_type_ids} if self.uses_types else {}
            with classifier.autocast:
                logits = model(input_ids=input_ids, attention_mask=attention_mask, **extra).logits.float()
            return logits / temperature

        explainer = LayerIntegratedGradients(forward, model.get_input_embeddings())
        attributions, deltas = [None] * len(inputs), [None] * len(inputs)
        per_pass = max(1, IG_TOKENS // self.steps)
        for indices in length_batches([len(ids) for ids, _, _ in inputs], self.batch_size, per_pass):
            arrays = tokenizer.batch([inputs[i][0] for i in indices], [inputs[i][1] for i in indices])
            ids = torch.from_numpy(arrays["input_ids"]).to(device)
            mask = torch.from_numpy(arrays["attention_mask"]).to(device)
            types = torch.from_numpy(arrays["token_type_ids"]).to(device)
            # the baseline: every word piece replaced by padding, the special tokens ([CLS], [SEP]) kept
            special = torch.zeros_like(ids, dtype=torch.bool)
            for row, i in enumerate(indices):
                word_of = inputs[i][2]
                span = (slice(ids.shape[1] - len(word_of), ids.shape[1]) if tokenizer.pad_left
                        else slice(0, len(word_of)))
                special[row, span] = torch.tensor([j < 0 for j in word_of])
            baseline = torch.where(special | (mask == 0), ids, torch.full_like(ids, pad_id))
            target = torch.tensor([labels[i] for i in indices], device=device)
            with torch.enable_grad():
                result = explainer.attribute(ids, baselines=baseline, additional_forward_args=(mask, types),
                                             target=target, n_steps=self.steps,
                                             internal_batch_size=len(indices) * self.steps,
                                             return_convergence_delta=with_delta)
            values, delta = result if with_delta else (result, None)
            values = values.sum(dim=-1).float().cpu().numpy()
            for row, i in enumerate(indices):
                n = len(inputs[i][0])
                attributions[i] = values[row, -n:] if tokenizer.pad_left else values[row, :n]
                deltas[i] = float(delta[row]) if with_delta else None
        return attributions, deltas


def explainer_of(classifier, options):
    """The classifier's Explainer for these ExplainOptions, built once (file mode's workers classify shard after
    shard with one classifier)."""
    cache = classifier.__dict__.setdefault("_explainers", {})
    if options not in cache:
        cache[options] = Explainer(classifier, options.method, options.steps)
    return cache[options]


def loaded_model(tokenizer, model, saved, device, precision, max_length, long_text, stride, pooling, batch_size):
    """What Explainer needs of a classifier, for a model a command loaded itself (evaluate_plm.py): the torch
    backend's attributes."""
    from types import SimpleNamespace

    from utils.runtime import autocast_context
    return SimpleNamespace(backend="torch", quantize="none", saved=saved, tokenizer=tokenizer, model=model,
                           device=device, autocast=autocast_context(device, precision), max_length=max_length,
                           long_text=long_text, stride=stride, window_pooling=pooling, batch_size=batch_size,
                           max_batch_tokens=None)


def explain_evaluation(explainer, items, result, wrong_only=True):
    """evaluate_plm.py --explain: the test set explained for the labels the model printed (result: training.
    evaluation's, its logits already calibrated). Returns ({row: its strongest words, for errors.tsv's wrong rows
    (a regression model: every row)}, top_words' table)."""
    from scoring.decision import choose_labels
    saved = explainer.saved
    logits = np.asarray(result["logits"], dtype=np.float32)
    if saved.regression:
        chosen, wrong = [[0]] * len(items), np.ones(len(items), dtype=bool)
    else:
        threshold = result["metrics"].get("threshold") if saved.multi_label else None
        _, chosen = choose_labels(probabilities_of(logits, saved.multi_label), saved.multi_label, None,
                                  0.5 if threshold is None else threshold)
        gold = np.asarray(result["labels"])
        if saved.multi_label:
            predicted = np.zeros_like(gold)
            for row, ids in zip(predicted, chosen):
                row[ids] = 1
            wrong = (predicted != gold).any(axis=1)
        else:
            wrong = np.asarray([ids[0] for ids in chosen]) != gold
    explained = explainer.explain(items, chosen)
    labels = saved.labels
    words = {}
    for i, ((text_words, rows), ids) in enumerate(zip(explained, chosen)):
        if wrong[i] or not wrong_only:
            parts = [strongest(text_words, row) for row in rows]
            words[i] = parts[0] if len(ids) == 1 else "; ".join(f"{labels[j]}: {part}" for j, part in zip(ids, parts))
    table = top_words([(text_words, dict(zip(ids, rows))) for (text_words, rows), ids in zip(explained, chosen)],
                      labels)
    return words, table


def strongest(words, attributions, n=STRONGEST):
    """The n words with the largest attribution towards the label, strongest first: `word (0.412)` joined by
    `, ` (evaluate_plm.py's errors.tsv)."""
    order = np.argsort(-np.asarray(attributions), kind="stable")[:n]
    return ", ".join(f"{words[j]} ({attributions[j]:.3g})" for j in order)


def top_words(explained, label_names, min_count=3, n=20):
    """{label: [(word, mean attribution, count)]}: per printed label, the words (lower-cased) with the
    highest mean attribution over the texts it was printed for, among words seen at least min_count times
    there (fewer are noise). explained: [(words, {label id: attributions})]."""
    sums, counts = {}, {}
    for words, by_label in explained:
        for label, values in by_label.items():
            s, c = sums.setdefault(label, {}), counts.setdefault(label, {})
            for word, value in zip(words, values):
                key = word.lower()
                s[key] = s.get(key, 0.0) + float(value)
                c[key] = c.get(key, 0) + 1
    out = {}
    for label in sorted(sums):
        means = [(word, sums[label][word] / count, count) for word, count in counts[label].items()
                 if count >= min_count]
        out[label_names[label]] = sorted(means, key=lambda x: (-x[1], x[0]))[:n]
    return out
