"""LoRA (--lora_r): low-rank adapters, added by peft, on the encoder's attention projections, and the
classification head trained in full; one place for both trainers (training.prepare wraps the model,
training.finish saves it through save_lora_model).

What a LoRA run saves: model.safetensors with the adapter merged in (a plain sequence classifier, so
classify, evaluate, export, the server and transformers.pipeline read it as any other), and the adapter
alone in adapter/ (adapter_model.safetensors + adapter_config.json, a few MB: the low-rank matrices and
the head), which peft puts back onto the base model:

    base = AutoModelForSequenceClassification.from_pretrained(<pretrained_model_name>, num_labels=N)
    model = PeftModel.from_pretrained(base, "<model_fn>/adapter")

The adapter has a directory of its own because transformers' from_pretrained, given a directory that holds
an adapter_config.json, loads the adapter's base model from its recorded name instead of the merged weights
beside it.

peft is imported only when a run asks for LoRA."""
from pathlib import Path

from utils.errors import UserError, first_line

ADAPTER_DIR = "adapter"
DEFAULT_DROPOUT = 0.1  # peft's sequence-classification examples

# The attention projections LoRA adapts by default, per architecture family (config.model_type): query and
# value, as in the LoRA paper (Hu et al. 2021, section 7.1) and peft's own defaults. DistilBERT names them
# q_lin/v_lin; ALBERT shares one layer's weights across depth, so one adapter serves every layer.
DEFAULT_TARGET_MODULES = {
    "bert": ("query", "value"), "roberta": ("query", "value"), "xlm-roberta": ("query", "value"),
    "camembert": ("query", "value"), "electra": ("query", "value"), "albert": ("query", "value"),
    "distilbert": ("q_lin", "v_lin"), "deberta-v2": ("query_proj", "value_proj"),
}


def default_target_modules(model_type):
    """The family's attention projections, else peft's own default for the type, else None."""
    if model_type in DEFAULT_TARGET_MODULES:
        return DEFAULT_TARGET_MODULES[model_type]
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_DEFAULTS
    found = PEFT_DEFAULTS.get(model_type)
    return tuple(found) if found else None


def head_modules(model):
    """The modules trained in full beside the adapter: everything outside the encoder (BERT's classifier,
    RoBERTa's and ELECTRA's classification head, DistilBERT's pre_classifier and classifier), and the
    encoder's pooler where the head reads it (BERT, ALBERT): a pretrained pooler was trained for next-sentence
    prediction or not at all (a sentence-embedding model's), so left frozen it feeds the head a poor summary."""
    encoder = model.base_model_prefix
    names = [name for name, child in model.named_children()
             if name != encoder and any(True for _ in child.parameters())]
    if getattr(model.base_model, "pooler", None) is not None:
        names.append("pooler")
    return names


def add_lora(model, options, train_embeddings=False):
    """The model with LoRA adapters (peft.PeftModel); options: ModelOptions with lora_r set;
    train_embeddings: the word embeddings train in full too (--extend_vocab added rows that start untrained).
    Whatever peft cannot do with this model is one line."""
    from peft import LoraConfig, TaskType, get_peft_model
    model_type = model.config.model_type
    given = [name.strip() for name in (options.lora_target_modules or "").split(",") if name.strip()]
    targets = tuple(given) or default_target_modules(model_type)
    if not targets:
        raise UserError(f"--lora_r: no default LoRA target modules for model type '{model_type}' (defaults: "
                        f"{', '.join(sorted(DEFAULT_TARGET_MODULES))}): name its attention projections with "
                        "--lora_target_modules, e.g. --lora_target_modules q_proj,v_proj")
    config = LoraConfig(task_type=TaskType.SEQ_CLS, r=options.lora_r,
                        lora_alpha=options.lora_alpha if options.lora_alpha is not None else 2 * options.lora_r,
                        lora_dropout=options.lora_dropout if options.lora_dropout is not None else DEFAULT_DROPOUT,
                        target_modules=list(targets),
                        modules_to_save=head_modules(model) + (["word_embeddings"] if train_embeddings else []))
    names = [name for name, _ in model.base_model.named_modules()]
    unmatched = [target for target in targets
                 if not any(name == target or name.endswith("." + target) for name in names)]
    if unmatched:
        linear = sorted({name.rsplit(".", 1)[-1] for name, module in model.base_model.named_modules()
                         if type(module).__name__ == "Linear"})
        raise UserError(f"--lora_target_modules: {', '.join(unmatched)} matches no layer of this {model_type} "
                        f"model; its linear layers are named {', '.join(linear)}")
    try:
        wrapped = get_peft_model(model, config)
    except Exception as error:  # ValueError, TypeError, peft's own: a layer kind it cannot adapt
        raise UserError(f"--lora_r: peft cannot add LoRA to this {model_type} model: {first_line(error)}") from None
    return wrapped


def is_lora(model):
    return hasattr(getattr(model, "module", model), "peft_config")


def trained_share(model):
    """(trained parameters, all parameters) of a model, counted as peft does (a shared tensor once)."""
    model = getattr(model, "module", model)
    if is_lora(model):
        return model.get_nb_trainable_parameters()
    parameters = list(model.parameters())
    return sum(p.numel() for p in parameters if p.requires_grad), sum(p.numel() for p in parameters)


def save_lora_model(directory, model):
    """Write the adapter (and the head) into directory/adapter; return the model with the adapter merged
    into its weights, a plain transformers classifier for save_pretrained. The peft model is used up."""
    model = getattr(model, "module", model)
    adapter = Path(directory) / ADAPTER_DIR
    model.save_pretrained(adapter, safe_serialization=True)
    (adapter / "README.md").unlink(missing_ok=True)  # peft's empty model-card template
    return model.merge_and_unload()
