"""How many tokens an input may have: the model's own limits, and --max_length held within them."""
from utils.log import log


def position_limit(config):
    """Longest input a model's position embeddings allow, from its config (an object, or config.json as
    a dict); RoBERTa-style models reserve two positions below their padding offset."""
    get = config.get if isinstance(config, dict) else (lambda key: getattr(config, key, None))
    positions = get("max_position_embeddings")
    if not isinstance(positions, int) or not 0 < positions < 1_000_000:
        return None
    return positions - (2 if get("model_type") in ("roberta", "xlm-roberta", "camembert") else 0)


def model_max_length(model, tokenizer):
    """Longest input the model accepts: its position embeddings and its tokenizer's limit bound it."""
    limits = [position_limit(model.config), tokenizer.model_max_length]
    limits = [limit for limit in limits if isinstance(limit, int) and 0 < limit < 1_000_000]
    return min(limits) if limits else None


def clamp_max_length(max_length, limit):
    """--max_length, or the model's limit with a warning when it asks for more (training and classifying)."""
    if limit and max_length > limit:
        log.warning(f"--max_length {max_length} is more than the model allows; using {limit}")
        return limit
    return max_length
