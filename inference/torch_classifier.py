"""The PyTorch classifier (`classify_plm.py --backend torch`, the default): the checkpoint loaded by
transformers, on the CPU or CUDA, in fp32, bf16/fp16 autocast or dynamic int8."""
import torch

from data_load import Example, TextClassificationCollator, TextClassificationDataset
from inference.decision import stored_threshold
from utils.checkpoint import load_checkpoint
from utils.errors import UserError
from utils.model import clamp_max_length, model_max_length
from utils.runtime import autocast_context, choose_device, choose_precision, pad_to_multiple_of


class TorchClassifier:
    def __init__(self, args):
        self.device = choose_device(args.device)
        precision = choose_precision(args.precision, self.device)
        self.tokenizer, self.model, training_args = load_checkpoint(args.model_fn, self.device)
        if args.quantize == "int8":
            if self.device.type != "cpu":
                raise UserError("--quantize int8 runs on the CPU; use --precision fp16/bf16 on CUDA instead")
            self.model = quantize_int8(self.model)
        self.labels = [self.model.config.id2label[i] for i in range(self.model.config.num_labels)]
        self.max_length = (clamp_max_length(args.max_length, model_max_length(self.model, self.tokenizer))
                           if args.max_length else training_args.get("max_length", 128))
        self.pairs = training_args.get("has_pairs", False)
        self.multi_label = self.model.config.problem_type == "multi_label_classification"
        self.threshold = stored_threshold(training_args, len(self.labels), args.model_fn) if self.multi_label else None
        self.label_separator = training_args.get("label_separator") or ","  # joins a multi-label prediction
        self.batch_size = args.batch_size
        self.collate = TextClassificationCollator(self.tokenizer, pad_to_multiple_of=pad_to_multiple_of(precision))
        self.autocast = autocast_context(self.device, precision)

    def probabilities(self, items):
        """(len(items), n_labels) NumPy probabilities of (text, pair) items, in input order (a sigmoid per
        label for a multi-label model, else a softmax)."""
        examples = [Example(text=text, text_pair=pair) for text, pair in items]
        return classify(self.model, self.tokenizer, self.collate, examples, self.max_length, self.batch_size,
                        self.device, self.autocast, self.multi_label).numpy()


@torch.inference_mode()
def classify(model, tokenizer, collate, examples, max_length, batch_size, device, autocast, multi_label=False):
    """Class probabilities in input order; batches are formed from length-sorted examples."""
    dataset = TextClassificationDataset(examples, tokenizer, max_length)
    order = sorted(range(len(dataset)), key=lambda i: dataset.lengths[i])
    probabilities = torch.empty(len(dataset), model.config.num_labels)
    for start in range(0, len(order), batch_size):
        indices = order[start:start + batch_size]
        batch = {k: v.to(device) for k, v in collate([dataset[i] for i in indices]).items()}
        with autocast:
            logits = model(**batch).logits
        probabilities[indices] = (logits.float().sigmoid() if multi_label else logits.float().softmax(dim=-1)).cpu()
    return probabilities


def quantize_int8(model):
    """Dynamic int8 quantization of every Linear layer: int8 weights with one scale per output channel
    (a single scale per tensor cost 0.9 points of accuracy on emotion; per channel 0.05), activations
    quantized per batch."""
    import warnings
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic
    with warnings.catch_warnings():
        # torch.ao.quantization is deprecated in favour of torchao, but in torch 2.13 it is still the
        # fastest int8 path on x86 CPUs (see docs/benchmarks.md); its notices are not the user's to act on.
        warnings.filterwarnings("ignore", message=".*deprecated.*")
        return quantize_dynamic(model, {torch.nn.Linear: per_channel_dynamic_qconfig})
