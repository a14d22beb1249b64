"""Can the hub weights be had? A probe the driver runs before any trial starts.

Without it, an offline machine retries for most of a minute before timm gives up, and it does so
inside a Ray worker, once per trial.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request

import timm
import torch
from huggingface_hub import constants, try_to_load_from_cache

from trainables.backbones import WeightSource, check_local_weights, timm_name
from trainables.errors import UserError
from trainables.hub import ways_out

PROBE_TIMEOUT_S = 3.0
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")


def _hub_repo(name: str) -> str:
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        raise UserError(f"timm has no pretrained weights for {name}; use 'file:PATH' or 'none'")
    return cfg.hf_hub_id or cfg.url


def is_cached(repo: str) -> bool:
    if repo.startswith("http"):
        filename = os.path.basename(repo)
        return os.path.isfile(os.path.join(torch.hub.get_dir(), "checkpoints", filename))
    return any(isinstance(try_to_load_from_cache(repo, f), str) for f in WEIGHT_FILES)


def hub_unreachable_reason(repo: str) -> str | None:
    """None when the hub answers within a few seconds, else why not."""
    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    url = repo if repo.startswith("http") else f"{constants.ENDPOINT}/api/models/{repo}"
    request = urllib.request.Request(url, method="HEAD")
    try:
        urllib.request.urlopen(request, timeout=PROBE_TIMEOUT_S).close()
    except urllib.error.HTTPError:
        return None  # the server answered; a 401/404 here is not a network problem
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        return f"{url}: {reason}"
    return None


def check_hub_weights(name: str) -> None:
    """Raise a UserError within seconds when `name`'s hub weights are neither cached nor reachable."""
    repo = _hub_repo(name)
    if is_cached(repo):
        return
    reason = hub_unreachable_reason(repo)
    if reason:
        raise UserError(f"cannot reach the model hub for {name} weights ({reason}); {ways_out(name)}")


def check_weights(name: str, source: WeightSource) -> None:
    """Fail before any training starts when the weights for `name` cannot be had: a missing file,
    no packaged weights, or a hub that is neither cached nor reachable within seconds."""
    check_local_weights(name, source)
    if source.kind == "hub":
        check_hub_weights(timm_name(name))
