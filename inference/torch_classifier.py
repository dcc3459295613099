"""The PyTorch classifier (`classify_plm.py --backend torch`, the default): the checkpoint loaded by
transformers, on the CPU or CUDA, in fp32, bf16/fp16 autocast or dynamic int8."""
import torch

from checkpoint.saved_model import load_checkpoint
from data_load import Example, TextClassificationCollator, TextClassificationDataset
from data_load.lengths import model_max_length
from inference.classifier import Classifier, length_batches
from utils.errors import UserError
from utils.runtime import autocast_context, choose_device, choose_precision, pad_to_multiple_of


class TorchClassifier(Classifier):
    backend = "torch"

    def __init__(self, options):
        """options: inference.classifier.ClassifierOptions."""
        self.device = choose_device(options.device)
        self.precision = choose_precision(options.precision, self.device)
        self.tokenizer, self.model, self.saved = load_checkpoint(options.model_fn, self.device)
        self.quantize = options.quantize
        if options.quantize == "int8":
            if self.device.type != "cpu":
                raise UserError("--quantize int8 runs on the CPU; use --precision fp16/bf16 on CUDA instead")
            self.model = quantize_int8(self.model)
        self.max_length = self.saved.input_length(options.max_length, model_max_length(self.model, self.tokenizer))
        self.set_long_text(options)
        self.batch_size, self.max_batch_tokens = options.batch_size, options.max_batch_tokens
        self.collate = TextClassificationCollator(self.tokenizer, pad_to_multiple_of=pad_to_multiple_of(self.precision))
        self.autocast = autocast_context(self.device, self.precision)

    def logits(self, items):
        return self.logits_and_embeddings(items, embeddings=False)[0]

    def logits_and_embeddings(self, items, embeddings=True):
        """(logits as `logits` gives them, and with `embeddings` each text's sentence embedding: the mean of
        the fine-tuned encoder's last hidden states over its tokens, sliding windows averaged; else None),
        from one forward pass."""
        examples = [Example(text=text, text_pair=pair) for text, pair in items]
        dataset = TextClassificationDataset(examples, self.tokenizer, self.max_length, long_text=self.long_text,
                                            stride=self.stride)
        logits, vectors = classify(self.model, self.collate, dataset, self.batch_size, self.device, self.autocast,
                                   self.max_batch_tokens, embeddings)
        logits = logits.numpy()
        if self.saved.calibration:  # --calibrate (the ONNX export has the same division in its graph)
            logits /= self.saved.temperature
        if vectors is not None and dataset.text_of_item is not None:
            from data_load.long_text import pool
            vectors = pool(vectors.numpy(), dataset.text_of_item, len(examples), "mean")
        elif vectors is not None:
            vectors = vectors.numpy()
        return self.pooled(logits, dataset.text_of_item, len(examples)), vectors


@torch.inference_mode()
def classify(model, collate, dataset, batch_size, device, autocast, max_batch_tokens=None, embeddings=False):
    """(float32 logits of a TextClassificationDataset's items in order, and with `embeddings` their mean-pooled
    last hidden states, else None); batches are formed from length-sorted items (sliding windows of many
    texts mixed)."""
    logits = torch.empty(len(dataset), model.config.num_labels)
    vectors = torch.empty(len(dataset), model.config.hidden_size) if embeddings else None
    for indices in length_batches(dataset.lengths, batch_size, max_batch_tokens):
        batch = {k: v.to(device) for k, v in collate([dataset[i] for i in indices]).items()}
        with autocast:
            output = model(**batch, output_hidden_states=embeddings)
            logits[indices] = output.logits.float().cpu()
            if embeddings:
                mask = batch["attention_mask"].unsqueeze(-1).float()
                states = output.hidden_states[-1].float()
                vectors[indices] = ((states * mask).sum(1) / mask.sum(1).clamp(min=1)).cpu()
    return logits, vectors


def quantize_int8(model):
    """int8 Linear layers: int8 weights with one scale per output channel (a single scale per tensor cost 0.9
    points of accuracy on emotion; per channel 0.05), activations quantized per token (TokenInt8Linear), so
    that a text's logits do not depend on the other texts in its batch."""
    import warnings
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic
    with warnings.catch_warnings():
        # torch.ao.quantization is deprecated in favour of torchao, but in torch 2.13 it is still the
        # fastest int8 path on x86 CPUs (see docs/benchmarks.md); its notices are not the user's to act on.
        warnings.filterwarnings("ignore", message=".*deprecated.*")
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
        model = quantize_dynamic(model, {torch.nn.Linear: per_channel_dynamic_qconfig})
        for module in list(model.modules()):
            for name, child in list(module.named_children()):
                if isinstance(child, DynamicLinear):
                    setattr(module, name, TokenInt8Linear(child))
    return model


class TokenInt8Linear(torch.nn.Module):
    """A dynamically quantized Linear whose input is quantized per token. quantize_dynamic's own picks one
    activation scale for the whole batch tensor, padding included, so a text's label depended on what else
    was in its batch (bench/int8_batches.py). Here each row (token) is divided by its largest magnitude, and
    a row holding 1 and -1 is appended: the tensor's range, from which the kernel takes its activation scale,
    is [-1, 1] in every batch, so each row is quantized as it would be alone; the output rows are multiplied
    back by their scales. The same int8 kernel as quantize_dynamic's (fbgemm)."""

    def __init__(self, dynamic):
        super().__init__()
        weight, bias = dynamic._packed_params._weight_bias()
        self.packed = torch.ops.quantized.linear_prepack(weight, None)  # the bias is added after the row scale
        self.bias = bias
        self.out_features = weight.shape[0]
        edge = torch.zeros(weight.shape[1])
        edge[0], edge[1 % weight.shape[1]] = 1.0, -1.0
        self.register_buffer("edge", edge, persistent=False)

    def forward(self, x):
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        # abs().amax, not vector_norm(inf), which runs unvectorized on the CPU
        scale = x.abs().amax(dim=1, keepdim=True).clamp_(min=1e-30)
        scaled = torch.empty(len(x) + 1, x.shape[1], dtype=x.dtype)
        torch.div(x, scale, out=scaled[:-1])
        scaled[-1] = self.edge
        y = torch.ops.quantized.linear_dynamic(scaled, self.packed, reduce_range=True)[:-1]
        y = torch.addcmul(self.bias, y, scale) if self.bias is not None else y.mul_(scale)
        return y.reshape(*shape[:-1], self.out_features)
