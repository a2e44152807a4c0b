"""Is a hub model usable here, now? Answered in about a second, before anything loads.

Loading a hub id that is not in the local Hugging Face cache makes ``huggingface_hub`` send
HEAD requests with exponential backoff (5 retries, 1 + 2 + 4 + 8 + 8 s) for each of the several
files transformers asks for: about a minute, then an error that does not say what to do. So the
extractors try the local cache first, and only when a model is missing do they reach for the
network, after one short socket probe of the hub (or of the HTTPS proxy, when one is set). When
the machine is offline (``--offline``, ``HF_HUB_OFFLINE``, or the probe fails) they raise
:class:`ModelUnavailableError` at once, naming each missing model and the ways to provide it.
"""

from __future__ import annotations

import os
import socket
import threading
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from dreamdist.evaluation.defaults import FEATURES_OF, feature_space

PROBE_TIMEOUT_S = 1.5  # a reachable hub answers a TCP connect in well under a second
DEFAULT_ENDPOINT = "https://huggingface.co"


class FeatureModelError(OSError):
    """A feature model's weights or processor could not be loaded; the message says how to fix it."""


class ModelUnavailableError(FeatureModelError):
    """A hub model is needed, is not cached, and the hub cannot be reached; the message says how to fix it."""


@dataclass(frozen=True)
class ModelNeed:
    """One model an evaluation needs: what it is for, its hub id or folder, and the flag that sets it."""

    what: str  # "CLIP", "DINO", ...
    model_id: str
    flag: str  # "--clip-model", ...


def model_needs(metrics: tuple[str, ...], features: str, models: dict[str, str]) -> list[ModelNeed]:
    """The hub-or-folder models that ``metrics`` load under ``--features features`` (unknown names skipped).

    Args:
        metrics: metric names (``fid``, ``clip-i``, ...).
        features: ``standard`` or a toy set (``toy-oracle``, ``toy-attributes``: no hub model).
        models: ``{"clip": id, "dino": id, "dinov2": id}`` as given by the flags.
    """
    names = {"clip": ("CLIP", "--clip-model"), "dino": ("DINO", "--dino-model"), "dinov2": ("DINOv2", "--dinov2-model")}
    kinds = dict.fromkeys(feature_space(m, features) for m in metrics if m in FEATURES_OF)
    return [ModelNeed(names[kind][0], models[kind], names[kind][1]) for kind in kinds if kind in names]


def is_local(model_id: str) -> bool:
    """Whether ``model_id`` names a folder (existing, or path-like) rather than a hub id."""
    return Path(model_id).expanduser().exists() or model_id.startswith((".", "/", "~")) or "\\" in model_id


def offline_mode() -> bool:
    """``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` set, now or when huggingface_hub was imported."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(name, "").upper() in ("1", "ON", "YES", "TRUE"):
            return True
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def in_local_cache(model_id: str) -> bool:
    """Whether the HF cache holds a snapshot of ``model_id`` (its ``config.json``); never touches the network."""
    import huggingface_hub

    try:
        return isinstance(huggingface_hub.try_to_load_from_cache(model_id, "config.json"), str)
    except Exception:  # an id the cache layout cannot hold: not cached
        return False


def probe_address() -> tuple[str, int]:
    """(host, port) a download would connect to first: the HTTPS proxy if one is set, else the hub endpoint."""
    from huggingface_hub import constants

    endpoint = os.environ.get("HF_ENDPOINT") or getattr(constants, "ENDPOINT", None) or DEFAULT_ENDPOINT
    url = urllib.parse.urlsplit(endpoint)
    proxy = urllib.request.getproxies().get(url.scheme or "https")
    if proxy and not urllib.request.proxy_bypass(url.hostname or ""):
        url = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    return url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)


def hub_reachable(timeout: float = PROBE_TIMEOUT_S) -> bool:
    """One TCP connect to :func:`probe_address`, bounded by ``timeout`` seconds (name lookup included)."""
    host, port = probe_address()
    result: list[bool] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(True)
        except OSError:  # name lookup failure, refused, unreachable, timed out
            result.append(False)

    thread = threading.Thread(target=connect, daemon=True)  # a hanging name lookup is left behind, not waited on
    thread.start()
    thread.join(timeout + 0.2)
    return bool(result and result[0])


def offline_reason(local_files_only: bool) -> str | None:
    """Why hub downloads are impossible now (``--offline``, the environment, no connection), or None."""
    if local_files_only:
        return "--offline was given"
    if offline_mode():
        return "HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set"
    if not hub_reachable():
        host, port = probe_address()
        return f"{host}:{port} cannot be reached (no connection within {PROBE_TIMEOUT_S:g} s)"
    return None


def unavailable_error(missing: list[ModelNeed], reason: str) -> ModelUnavailableError:
    """The error for models that are neither local nor cached while downloads are impossible."""
    from huggingface_hub import constants

    names = [f"the {need.what} model {need.model_id!r}" for need in missing]
    listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    folders = "; ".join(f"`hf download {need.model_id} --local-dir DIR`, then {need.flag} DIR" for need in missing)
    return ModelUnavailableError(
        f"{listed} {'is' if len(missing) == 1 else 'are'} not in the local Hugging Face cache "
        f"({constants.HF_HUB_CACHE}) and cannot be downloaded: {reason}. Either copy "
        f"{'it' if len(missing) == 1 else 'each'} to a folder from a connected machine ({folders}), or fill "
        f"this cache while connected (`hf download {missing[0].model_id}`; later runs load it offline). "
        "For toy-world images, `--features toy-oracle` (or toy-attributes) needs no download"
    )


def require_available(needs: list[ModelNeed], local_files_only: bool = False) -> None:
    """Raise :class:`ModelUnavailableError` at once when a hub model is missing and cannot be downloaded.

    Local folders are not checked here (their loaders say what is wrong with them); cached hub ids
    pass without any network access; a missing hub id costs one probe of at most ~1.5 s.
    """
    missing = [need for need in needs if not is_local(need.model_id) and not in_local_cache(need.model_id)]
    if not missing:
        return
    reason = offline_reason(local_files_only)
    if reason is not None:
        raise unavailable_error(missing, reason)
