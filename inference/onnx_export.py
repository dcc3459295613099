"""ONNX export of a checkpoint (export_plm.py): fp32 by torch.onnx, int8 by onnxruntime's dynamic
quantization, each checked against the PyTorch model before it is written into the checkpoint.

torch.onnx.export's default exporter (dynamo, torch.export-based; needs onnxscript) is used. The
older TorchScript exporter (dynamo=False) traced transformers 5's attention-mask code into
constants: its MiniLM export was off by 0.02-0.04 in the logits even on a single unpadded sentence,
where the dynamo export agrees to 1e-7."""
import json
import logging
import os
import platform
import time
import warnings
from contextlib import contextmanager

import numpy as np
import torch

from checkpoint.model_card import ONNX_RECORD
from checkpoint.run_dir import hold_model
from checkpoint.saved_model import SavedModel, load_checkpoint, weights_digest
from data_load import Example, TextClassificationCollator, TextClassificationDataset
from data_load.tokens import FastTokenizer
from inference.onnx_classifier import (ACTIVATIONS_KEY, ONNX_FILES, PER_TOKEN, TEMPERATURE_KEY, WEIGHTS_KEY,
                                      load_session)
from utils.errors import UserError, first_line
from utils.files import atomic_write

# Different lengths (so batches are padded), non-Latin text and an emoji (unknown and split tokens),
# and one review longer than any max_length (truncation).
VERIFY_TEXTS = [
    "Works perfectly.",
    "This kettle is a complete waste of money. Returning it.",
    "i feel so happy and grateful today",
    "Absolutely terrible customer service: I waited three weeks and nobody answered a single email!!!",
    "배송이 빨랐어요 👍",
    "ok",
    " ".join(["The battery lasts for days and the screen is bright, but the speaker is far too quiet."] * 40),
    "The cat sat on the mat.",
]
# Opset 23 has an Attention operator: the exporter writes each scaled-dot-product attention as one node,
# which onnxruntime runs as one kernel, instead of opset 18's MatMul/Softmax/MatMul. On NSMC (MiniLM,
# 50 tokens a batch row on average) that made fp32 3-9% and int8 11-20% faster.
OPSET = 23
# fp32: the dynamo export agrees with PyTorch to 1.4e-6 on MiniLM fine-tuned on emotion (logits up to
# +-4) and to 2e-8 on 2-layer test models; a real mismatch (the TorchScript exporter's) is 0.02 and more.
FP32_TOLERANCE = 1e-3
# int8: quantization noise, measured as a share of the spread (max - min) of the fp32 logits on
# VERIFY_TEXTS: 2-5% on MiniLM fine-tuned on emotion, 1-2% on the 2-layer test models (activations quantized
# per token; per batch it was 4% and 2-8%). A broken graph is off by about the whole spread.
INT8_TOLERANCE = 0.25


def export(model_fn, log=print):
    """Write model_fn/model.onnx and model_fn/model.int8.onnx, or nothing when either disagrees with PyTorch;
    then onnx_export.json, what the model card says of them (sizes, fidelity, a rough speed figure).
    The model is held (checkpoint.run_dir.hold_model) from before its weights are read until both files are in
    place, and each file records the weights it was made from (WEIGHTS_KEY), so that the ONNX classifier
    can refuse an export older than the model."""
    SavedModel.read(model_fn)  # a missing or broken checkpoint is one line before the lock is taken
    with hold_model(model_fn, "export_plm.py"):
        return _export(os.fspath(model_fn), log)


def _export(model_fn, log):
    """Both files written under temporary names and put in place only once both are verified. Entered
    first, so that a killed export's temporaries (SIGKILL cannot be cleaned up after), which these reuse,
    go even when this export fails early."""
    targets = {quantize: os.path.join(model_fn, name) for quantize, name in ONNX_FILES.items()}
    with atomic_write(targets["none"]) as fp32, atomic_write(targets["int8"]) as int8:
        facts = _write_verified(model_fn, {"none": os.fspath(fp32), "int8": os.fspath(int8)}, targets, log)
    write_record(model_fn, targets, *facts)  # what the model card says of the files now in place
    return targets


def _write_verified(model_fn, temporary, targets, log):
    weights = weights_digest(model_fn)
    tokenizer, model, saved = load_checkpoint(model_fn)
    if saved.calibration:  # --calibrate: the graph gives the logits the torch classifier gives
        model = TemperatureScaled(model, saved.temperature)
    if not os.path.exists(os.path.join(model_fn, "tokenizer.json")):
        raise UserError(f"{model_fn}: no tokenizer.json: the ONNX classifier needs the fast (tokenizers) version "
                        "of the tokenizer, and this model has only a slow one")
    max_length = saved.max_length
    items = [(text, pair if saved.pairs else None) for text, pair in zip(VERIFY_TEXTS, VERIFY_TEXTS[1:] + VERIFY_TEXTS[:1])]
    batches = [items, items[:1], items[-2:]]  # padded, a single sentence, a batch of two
    inputs = [same_inputs(model_fn, tokenizer, batch, max_length) for batch in batches]
    with torch.inference_mode():
        reference = [model(**{k: torch.from_numpy(v) for k, v in arrays.items()}).logits.float().numpy()
                     for arrays in inputs]
    spread = float(max(r.max() - r.min() for r in reference)) or 1.0
    if saved.regression and saved.target_scale:
        # a regression model's outputs can sit close together on these sentences: its noise is measured
        # against the spread of the numbers it was trained on (their standard deviation) where that is wider
        spread = max(spread, float(saved.target_scale[1]))

    started = time.time()
    export_fp32(model, inputs[0], temporary["none"])
    facts = {}
    difference, facts["none"] = max_difference(temporary["none"], inputs, reference)
    log(f"{targets['none']}: {size_mb(temporary['none'])} MB in {time.time() - started:.1f} s; max abs logit "
        f"difference to PyTorch {difference:.2e} on {len(items)} sentences (tolerance {FP32_TOLERANCE:g})")
    if not difference <= FP32_TOLERANCE:
        raise UserError(f"{model_fn}: the ONNX export disagrees with the PyTorch model (max abs logit difference "
                        f"{difference:.3g} > {FP32_TOLERANCE:g}); refusing to write it")
    quantize_int8(temporary["none"], temporary["int8"])
    for quantize, path in temporary.items():
        record_metadata(path, {WEIGHTS_KEY: weights, TEMPERATURE_KEY: repr(saved.temperature),
                               **({ACTIVATIONS_KEY: PER_TOKEN} if quantize == "int8" else {})})
    difference, facts["int8"] = max_difference(temporary["int8"], inputs, reference)
    log(f"{targets['int8']}: {size_mb(temporary['int8'])} MB; max abs logit difference to PyTorch fp32 "
        f"{difference:.3f} ({difference / spread:.1%} of the logits' spread {spread:.2f}; tolerance "
        f"{INT8_TOLERANCE:.0%})")
    if not difference <= INT8_TOLERANCE * spread:
        raise UserError(f"{model_fn}: the int8 ONNX model disagrees with the PyTorch model (max abs logit "
                        f"difference {difference:.3g}, {difference / spread:.0%} of the spread); "
                        "refusing to write it")
    with torch.inference_mode():
        torch_ms = best_ms(lambda: model(**{k: torch.from_numpy(v) for k, v in inputs[0].items()}))
    return facts, torch_ms, len(items)


def write_record(model_fn, targets, facts, torch_ms, n_sentences):
    """onnx_export.json: each file's size, its largest logit difference to PyTorch and one padded batch's time
    beside PyTorch's. The time is one batch of the verification sentences on this machine at export: a
    rough figure, said as such on the card; docs/benchmarks.md has measured throughput."""
    import onnxruntime
    files = {os.path.basename(targets[quantize]): {
        "precision": "fp32" if quantize == "none" else "int8 weights, activations quantized per token",
        "size_mb": float(size_mb(targets[quantize])), **facts[quantize]} for quantize in ONNX_FILES}
    onnx_ms, int8_ms = facts["none"]["ms_per_batch"], facts["int8"]["ms_per_batch"]
    record = {
        "opset": OPSET, "files": files, "torch_ms_per_batch": torch_ms,
        "speed_note": (f"one padded batch of the {n_sentences} verification sentences at export, on "
                       f"{os.cpu_count()} CPUs ({platform.machine()}): PyTorch fp32 {torch_ms:.1f} ms, ONNX fp32 "
                       f"{onnx_ms:.1f} ms ({torch_ms / onnx_ms:.2f}x as fast), int8 {int8_ms:.1f} ms "
                       f"({torch_ms / int8_ms:.2f}x): a rough figure from one batch. Measured on emotion and NSMC "
                       "(docs/benchmarks.md), batches ran 1.05-1.3x (fp32) and 1.25-1.45x (int8) as fast as with "
                       "torch, and a whole 1-line run of classify_plm.py --backend onnx took 0.25-0.45 s against "
                       "5-6 s of start-up with torch"),
        "versions": {"onnxruntime": onnxruntime.__version__, "torch (export)": torch.__version__},
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    with atomic_write(os.path.join(model_fn, ONNX_RECORD), "w", encoding="utf-8") as f:
        f.write(json.dumps(record, indent=2) + "\n")


def best_ms(run, repeats=3):
    """The fastest of `repeats` runs after one to warm up, in milliseconds (the least disturbed by other work)."""
    run()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return round(min(times) * 1000, 2)


def same_inputs(model_fn, tokenizer, items, max_length):
    """One padded batch as numpy arrays, checked to be what both classifiers feed their models: the
    transformers tokenizer and collator (torch backend) and FastTokenizer (onnx backend)."""
    examples = [Example(text=text, text_pair=pair) for text, pair in items]
    dataset = TextClassificationDataset(examples, tokenizer, max_length)
    batch = TextClassificationCollator(tokenizer)([dataset[i] for i in range(len(dataset))])
    expected = {name: tensor.numpy() for name, tensor in batch.items()}
    fast = FastTokenizer(model_fn, max_length)
    arrays = fast.batch(*fast.encode(items))
    for name, array in expected.items():
        if not np.array_equal(arrays[name], array):
            row = next(i for i in range(len(items)) if not np.array_equal(arrays[name][i], array[i]))
            raise UserError(f"{model_fn}/tokenizer.json: tokenizers gives other {name} than transformers' tokenizer "
                            f"for {items[row][0][:40]!r}; the ONNX classifier could not reproduce this model's input")
    return {name: arrays[name] for name in expected}


@contextmanager
def quiet():
    """The exporters' progress notes and warnings (axis renaming, torchvision absent, deprecations,
    'consider pre-processing') are not the user's to act on; errors still surface as exceptions."""
    loggers = [logging.getLogger(name) for name in ("", "torch.onnx", "torch._dynamo", "torch.export")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def export_fp32(model, arrays, path):
    """Dynamic batch and sequence axes; the inputs are the batch's (token_type_ids only where the
    tokenizer gives them, so not for RoBERTa or DistilBERT)."""
    names = list(arrays)
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    try:
        with quiet():
            program = torch.onnx.export(model, (), kwargs={k: torch.from_numpy(v) for k, v in arrays.items()},
                                        input_names=names, output_names=["logits"], dynamo=True, verbose=False,
                                        dynamic_shapes={name: {0: batch, 1: sequence} for name in names},
                                        opset_version=OPSET, external_data=False)
            program.save(path)
    except Exception as error:  # the exporter raises many kinds; the model cannot be exported as it is
        raise UserError(f"torch.onnx.export failed for this model: {first_line(error)}") from None
    attention_on_hidden_layout(path, model.config)


def quantize_int8(source, target):
    """int8: onnxruntime's dynamic quantization (quantize_dynamic_only), then activations quantized per row
    (per_row_activations), as `--quantize int8` does in torch."""
    quantize_dynamic_only(source, target)
    per_row_activations(target)


def quantize_dynamic_only(source, target):
    """onnxruntime's dynamic quantization: int8 weights with one scale per output channel, activations
    quantized at run time with one scale per tensor (a whole batch: bench/int8_batches.py). On emotion (2,000
    sentences, MiniLM): per channel 88.8% accuracy and 98.5% agreement with fp32 (88.3%); one scale per tensor
    87.5% and 96.8%. Quantizing the embedding matrix too (Gather, not only MatMul) shrank the file
    from 57 to 23 MB at the same agreement and speed. Not Attention: the quantizer takes opset 23's
    Attention for onnxruntime's own and writes a QAttention that fails to load."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    with quiet():
        quantize_dynamic(source, target, per_channel=True, weight_type=QuantType.QInt8,
                         op_types_to_quantize=["MatMul", "Gather"])


def graph_index(graph):
    """({tensor name: the nodes that read it}, {tensor name: the node that writes it}, {initializer name: tensor})."""
    consumers, producer = {}, {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
        producer.update({name: node for name in node.output})
    return consumers, producer, {tensor.name: tensor for tensor in graph.initializer}


def attention_on_hidden_layout(path, config):
    """The exporter writes each attention as Reshape + Transpose of the query, key and value into (batch, heads,
    sequence, head size), the Attention node, and Transpose + Reshape of its output back: eight copies a layer.
    Opset 23's Attention takes and gives the (batch, sequence, hidden) layout itself when told the number of
    heads, so those eight nodes go (the same numbers, faster: docs/benchmarks.md,
    "Figures behind the code"). An attention of any other shape is left as exported."""
    import onnx
    from onnx import helper, numpy_helper
    heads, hidden = getattr(config, "num_attention_heads", None), getattr(config, "hidden_size", None)
    if not heads or not hidden or hidden % heads:
        return
    model = onnx.load(path)
    graph = model.graph
    consumers, producer, weights = graph_index(graph)

    def only_reader(name, op_type):
        readers = consumers.get(name, [])
        return readers[0] if len(readers) == 1 and readers[0].op_type == op_type else None

    def swaps_heads(node):  # (batch, sequence, heads, size) <-> (batch, heads, sequence, size)
        return node is not None and node.op_type == "Transpose" and [list(a.ints) for a in node.attribute] == [[0, 2, 1, 3]]

    def splits_into_heads(reshape):  # the shape (batch, sequence, -1 or heads, hidden / heads), as a Concat
        concat = producer.get(reshape.input[1]) if reshape is not None and reshape.op_type == "Reshape" else None
        if concat is None or concat.op_type != "Concat" or len(concat.input) != 4:
            return False
        parts = [numpy_helper.to_array(weights[name]).tolist() if name in weights else None for name in concat.input[2:]]
        return parts[0] in ([-1], [heads]) and parts[1] == [hidden // heads]

    dropped = set()
    for attention in [node for node in graph.node if node.op_type == "Attention"]:
        transposes = [producer.get(name) for name in attention.input[:3]]
        reshapes = [producer.get(t.input[0]) if swaps_heads(t) else None for t in transposes]
        back = only_reader(attention.output[0], "Transpose")
        merge = only_reader(back.output[0], "Reshape") if swaps_heads(back) else None
        if merge is None or not all(splits_into_heads(r) and only_reader(r.output[0], "Transpose") for r in reshapes):
            continue
        if any(len(consumers[t.output[0]]) != 1 for t in transposes) or \
                any(a.name in ("q_num_heads", "kv_num_heads") for a in attention.attribute):
            continue
        attention.input[:3] = [r.input[0] for r in reshapes]
        attention.output[0] = merge.output[0]
        attention.attribute.extend([helper.make_attribute("q_num_heads", heads),
                                    helper.make_attribute("kv_num_heads", heads)])
        dropped.update(id(node) for node in [*transposes, *reshapes, back, merge])
    if not dropped:
        return
    kept = [node for node in graph.node if id(node) not in dropped]
    del graph.node[:]
    graph.node.extend(kept)
    rewritten = model.SerializeToString()
    try:  # a graph onnxruntime cannot load: the export as it was (the verification then judges that one)
        import onnxruntime
        options = onnxruntime.SessionOptions()  # loaded only, not optimized: the verification's session runs it
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
        onnxruntime.InferenceSession(rewritten, options, providers=["CPUExecutionProvider"])
    except Exception:  # onnxruntime raises its own Fail/InvalidGraph/... kinds
        return
    with open(path, "wb") as file:
        file.write(rewritten)


def per_row_activations(path):
    """Each DynamicQuantizeLinear of the quantized graph picks one scale for the whole activation tensor
    (every text of the batch, padding included), so a text's label depended on the other texts in its
    batch (bench/int8_batches.py). Here every row (token) gets its own: its largest magnitude / 127, the row
    quantized with it (QuantizeLinear, one block per row, zero point 128: DynamicQuantizeLinear's range), and
    each matmul fed by it becomes a MatMulIntegerToFloat of the same weights whose output rows are multiplied
    back by their scales (the bias is added after that, by the graph's own Add). The same row gives the same
    numbers in any batch."""
    import onnx
    from onnx import helper, numpy_helper
    model = onnx.load(path)
    graph = model.graph
    consumers, producer, weights = graph_index(graph)

    def constant(name, value, dtype):
        graph.initializer.append(numpy_helper.from_array(np.array(value, dtype=dtype), name))
        return name
    axes, one = constant("per_row_axes", [-1], np.int64), constant("per_row_one", 1.0, np.float32)
    tiny = constant("per_row_tiny", 1e-30, np.float32)  # an all-zero row: no division by 0
    step, zero_point = constant("per_row_step", 1 / 127, np.float32), constant("per_row_zero_point", 128, np.uint8)
    replaced, dropped = {}, set()
    for node in graph.node:
        if node.op_type != "DynamicQuantizeLinear":
            continue
        x, (quantized, scale, _) = node.input[0], node.output
        matmuls = consumers.get(quantized, [])
        if not matmuls or any(m.op_type != "MatMulInteger" for m in matmuls):
            raise RuntimeError(f"{path}: {node.name} feeds {[m.op_type for m in matmuls]}, not MatMulInteger")
        width = weights[matmuls[0].input[1]].dims[0]  # the row length: what one quantization block spans
        p = f"{node.name}_per_row"
        row_scale = f"{p}_scale"
        replaced[node.name] = [  # |x| at most: max(max(x), -min(x)); one read each, no |x| written
            helper.make_node("ReduceMax", [x, axes], [f"{p}_high"], name=f"{p}_high", keepdims=1),
            helper.make_node("ReduceMin", [x, axes], [f"{p}_low"], name=f"{p}_low", keepdims=1),
            helper.make_node("Neg", [f"{p}_low"], [f"{p}_minus_low"], name=f"{p}_minus_low"),
            helper.make_node("Max", [f"{p}_high", f"{p}_minus_low", tiny], [f"{p}_max"], name=f"{p}_max"),
            helper.make_node("Mul", [f"{p}_max", step], [row_scale], name=f"{p}_row_scale"),
            helper.make_node("Shape", [row_scale], [f"{p}_shape"], name=f"{p}_shape"),
            helper.make_node("ConstantOfShape", [f"{p}_shape"], [f"{p}_zero_point"], name=f"{p}_zero_point",
                             value=numpy_helper.from_array(np.array([128], dtype=np.uint8))),
            helper.make_node("QuantizeLinear", [x, row_scale, f"{p}_zero_point"], [quantized], name=f"{p}_q",
                             axis=-1, block_size=width)]
        for matmul in matmuls:  # MatMulInteger -> Cast -> Mul(Mul(this scale, the weights' scale)): quantize_dynamic's
            cast = consumers[matmul.output[0]][0]
            scaled = consumers[cast.output[0]][0]
            scales = producer[next(name for name in scaled.input if name != cast.output[0])]
            if (cast.op_type, scaled.op_type, scales.op_type) != ("Cast", "Mul", "Mul"):
                raise RuntimeError(f"{path}: unexpected quantized graph after {matmul.name}")
            weight_scale = next(name for name in scales.input if name != scale)
            output = scaled.output[0]
            dropped.update({cast.name, scaled.name, scales.name})
            replaced[matmul.name] = [
                helper.make_node("MatMulIntegerToFloat", [quantized, matmul.input[1], one, weight_scale, zero_point,
                                                          matmul.input[3]], [f"{output}_per_row"],
                                 name=f"{matmul.name}_per_row", domain="com.microsoft"),
                helper.make_node("Mul", [f"{output}_per_row", row_scale], [output], name=f"{matmul.name}_row_scale")]
    nodes = []
    for node in graph.node:
        if node.name in replaced:
            nodes.extend(replaced[node.name])
        elif node.name not in dropped:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    if not any(opset.domain == "com.microsoft" for opset in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    onnx.save(model, path)


def record_metadata(path, values):
    """Store the weights' identity and the temperature in the ONNX file's metadata (read back by onnxruntime
    at no cost)."""
    import onnx
    model = onnx.load(path)
    del model.metadata_props[:]
    for key, value in values.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, path)


class TemperatureScaled(torch.nn.Module):
    """A classifier whose logits are divided by its --calibrate temperature, as exported into the graph."""

    def __init__(self, model, temperature):
        super().__init__()
        self.model, self.temperature = model, temperature
        self.config = model.config  # the exported model's shape (attention_on_hidden_layout reads it)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):  # named: the exporter's dynamic axes
        from transformers.modeling_outputs import SequenceClassifierOutput
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        logits = self.model(**{name: value for name, value in inputs.items() if value is not None}).logits
        return SequenceClassifierOutput(logits=logits / self.temperature)


def max_difference(path, inputs, reference):
    """(the largest abs logit difference to the reference on the batches, {its figures for the record}: that
    difference and the first batch's time)."""
    session = load_session(path)
    names = {i.name for i in session.get_inputs()}
    feeds = [{k: v for k, v in arrays.items() if k in names} for arrays in inputs]
    outputs = [session.run(["logits"], feed)[0] for feed in feeds]
    difference = float(max(np.abs(output - expected).max() for output, expected in zip(outputs, reference)))
    return difference, {"max_abs_logit_difference": difference,
                        "ms_per_batch": best_ms(lambda: session.run(["logits"], feeds[0]))}


def size_mb(path):
    return f"{os.path.getsize(path) / 2**20:.1f}"
