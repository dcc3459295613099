"""The /predict contract, as text-embeddings-inference's /predict has it.

Request: {"inputs": ..., "raw_scores": false, "explain": false}
  "a text"                          one input; the response is a list of {label, score}
  ["text", "pair"]                  one sentence pair (a model trained on pairs); as TEI reads it
  ["a", "b", "c"]                   a batch of texts (a model trained on single sentences)
  [["a"], ["b", "pair"], ...]       a batch, each a text or a text pair; the response is a list of lists
Every label comes back with its score, highest first (`raw_scores`: logits instead of probabilities),
and `predicted` marks the labels classify_plm.py would print: the most probable one, or for a
multi-label model every label at or above its threshold (the most probable when none is).
"explain": true adds `words` to each predicted label: every word of the input (a pair: the text's, then the pair's)
with its attribution towards that label, by the server's method (--explain_method); "integrated_gradients" or
"occlusion" name the method instead (inference/explain.py).
"truncate" is accepted for TEI clients: a text longer than the model's max length is handled as the model was
trained (--long_text: truncated, head and tail, or sliding windows pooled into one prediction).

Bad requests raise BadRequest with the HTTP status and TEI's error types."""
import json
from dataclasses import dataclass

import numpy as np

FIELDS = ("inputs", "raw_scores", "truncate", "explain")
EXPLAIN_METHODS = ("integrated_gradients", "occlusion")  # inference.explain.METHODS (kept torch- and numpy-light here)

# OpenAPI (GET /docs): the body is parsed by hand (parse_predict) for exact one-line errors, so the
# schema is written out here.
_TEXT = {"type": "string", "minLength": 1}
_SEQUENCE = {"type": "array", "items": _TEXT, "minItems": 1, "maxItems": 2}
REQUEST_SCHEMA = {
    "type": "object", "required": ["inputs"], "additionalProperties": False,
    "properties": {
        "inputs": {"oneOf": [
            {**_TEXT, "description": "one text"},
            {"type": "array", "items": _TEXT, "minItems": 1,
             "description": "texts (a single-sentence model), or one [text, pair] (a pair model)"},
            {"type": "array", "items": _SEQUENCE, "minItems": 1, "description": "a batch of [text] or [text, pair]"},
        ], "example": "I love this kettle, it boils in a minute."},
        "raw_scores": {"type": "boolean", "default": False, "description": "logits instead of probabilities"},
        "truncate": {"type": "boolean", "default": True,
                     "description": "accepted for TEI clients; a text longer than the model's max length is "
                                    "handled as the model was trained (--long_text)"},
        "explain": {"oneOf": [{"type": "boolean"}, {"type": "string", "enum": list(EXPLAIN_METHODS)}], "default": False,
                    "description": "word attributions for each predicted label (`words`): true for the server's "
                                   "method (GET /info: explain), or a method's name"},
    },
}
PREDICTION_SCHEMA = {"type": "object", "properties": {
    "label": {"type": "string"}, "score": {"type": "number"},
    "predicted": {"type": "boolean", "description": "a label classify_plm.py would print for this input"},
    "words": {"type": "array", "items": {"type": "array", "prefixItems": [{"type": "string"}, {"type": "number"}]},
              "description": "with explain, on predicted labels: every word of the input with its attribution "
                             "towards this label (positive: towards it)"}}}
RESPONSE_SCHEMA = {"oneOf": [{"type": "array", "items": PREDICTION_SCHEMA},
                             {"type": "array", "items": {"type": "array", "items": PREDICTION_SCHEMA}}]}


class BadRequest(Exception):
    def __init__(self, status, error_type, message):
        super().__init__(message)
        self.status, self.error_type = status, error_type


@dataclass
class PredictRequest:
    items: list  # (text, pair) pairs; pair None for a single-sentence model
    batch: bool  # the response is a list of lists
    raw_scores: bool
    explain: object = False  # False, True (the server's method) or a method's name


def parse_predict(body, pairs, max_inputs, max_chars):
    """The request's inputs as (text, pair) items, checked against the limits; BadRequest otherwise."""
    try:
        request = json.loads(body)
    except (ValueError, RecursionError) as error:  # UnicodeDecodeError included; RecursionError: [[[[...]]]]
        raise BadRequest(400, "invalid_json", f"the body is not JSON ({str(error)[:200]}); "
                                              f"send {{\"inputs\": \"a text\"}}") from None
    if not isinstance(request, dict):
        raise BadRequest(422, "validation", f"the body must be a JSON object like {{\"inputs\": \"a text\"}}, "
                                            f"not a {type(request).__name__}")
    unknown = sorted(set(request) - set(FIELDS))
    if unknown:
        raise BadRequest(422, "validation", f"unknown field {', '.join(map(repr, unknown))}; the fields are "
                                            f"{', '.join(FIELDS)}")
    if "inputs" not in request:
        raise BadRequest(422, "validation", "the field inputs is missing: send {\"inputs\": \"a text\"}")
    for flag in ("raw_scores", "truncate"):
        if not isinstance(request.get(flag, False), bool):
            raise BadRequest(422, "validation", f"{flag} must be true or false, not {request[flag]!r}")
    explain = request.get("explain", False)
    if not isinstance(explain, bool) and explain not in EXPLAIN_METHODS:
        raise BadRequest(422, "validation", f"explain must be true, false or one of {', '.join(EXPLAIN_METHODS)}, "
                                            f"not {json.dumps(explain)[:60]}")
    items, batch = _items(request["inputs"], pairs)
    if len(items) > max_inputs:
        raise BadRequest(413, "validation", f"{len(items)} inputs in one request; at most {max_inputs} (--max_inputs)")
    for i, (text, pair) in enumerate(items):
        where = f"inputs[{i}]" if batch else "inputs"
        # empty only when nothing is there to read: ["", "pair"] is classified, as classify_plm.py classifies
        # the line "<TAB>pair", and ["text", ""] is how a pair model reads a single text
        if not text.strip() and not (pair or "").strip():
            raise BadRequest(400, "empty", f"{where} is empty: send text to classify")
        try:  # a lone surrogate (JSON "\ud800") is no text the tokenizer can take: a value the schema refuses
            text.encode("utf-8"), (pair or "").encode("utf-8")
        except UnicodeEncodeError:
            raise BadRequest(422, "validation", f"{where} holds an unpaired surrogate (\\ud800-\\udfff): "
                                                "send UTF-8 text") from None
        size = len(text) + len(pair or "")
        if size > max_chars:
            raise BadRequest(413, "validation", f"{where} has {size} characters; at most {max_chars} (--max_chars)")
    return PredictRequest(items, batch, request.get("raw_scores", False), explain)


def _items(inputs, pairs):
    """((text, pair) items, is a batch) from the inputs field, read as TEI reads it."""
    empty_pair = "" if pairs else None  # a pair model given one sentence reads it with an empty pair, as classify_plm.py
    if isinstance(inputs, str):
        return [(inputs, empty_pair)], False
    if not isinstance(inputs, list):
        raise BadRequest(422, "validation", f"inputs must be a text, a list of texts or a list of [text, pair], "
                                            f"not {type(inputs).__name__}")
    if not inputs:
        raise BadRequest(400, "empty", "inputs is an empty list: send at least one text")
    if all(isinstance(x, str) for x in inputs):
        if pairs and len(inputs) == 2:  # TEI: a list of two strings is one pair
            return [(inputs[0], inputs[1])], False
        return [(text, empty_pair) for text in inputs], True
    if isinstance(inputs[0], str):  # a list of texts with something else in it: blame that element
        i, other = next((i, x) for i, x in enumerate(inputs) if not isinstance(x, str))
        raise BadRequest(422, "validation", f"inputs[{i}] must be a text like inputs[0] (texts and lists cannot be "
                                            f"mixed), not {json.dumps(other)[:60]}")
    items = []
    for i, sequence in enumerate(inputs):
        if (not isinstance(sequence, list) or not 1 <= len(sequence) <= 2
                or not all(isinstance(x, str) for x in sequence)):
            raise BadRequest(422, "validation", f"inputs[{i}] must be [text] or [text, pair] in a batch of lists "
                                                f"(texts and lists cannot be mixed), not {json.dumps(sequence)[:60]}")
        if len(sequence) == 2 and not pairs:
            raise BadRequest(422, "validation", f"inputs[{i}] is a text pair, but this model was trained on single "
                                                "sentences: send [text]")
        items.append((sequence[0], sequence[1] if len(sequence) == 2 else empty_pair))
    return items, True


def predictions(labels, values, probabilities, chosen, words=None):
    """Every label with its score (`values`: probabilities or logits), most probable first; `chosen`
    (label ids) are marked predicted. words: with explain, one [[word, attribution], ...] per chosen label, in
    the order of `chosen`, added to its label."""
    explained = dict(zip(map(int, chosen), words)) if words is not None else {}
    chosen = set(chosen)
    answer = []
    for j in np.argsort(-probabilities, kind="stable"):
        answer.append({"label": labels[j], "score": float(values[j]), "predicted": j in chosen})
        if int(j) in explained:
            answer[-1]["words"] = explained[int(j)]
    return answer
