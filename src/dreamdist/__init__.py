"""dreamdist: learn a distribution of prompts from reference images and generate from it.

Python API::

    from dreamdist import TrainConfig, GenerateConfig, train, generate, interpret
"""

__version__ = "0.1.0"

_API = ("TrainConfig", "GenerateConfig", "GenerationResult", "train", "generate", "interpret")


def __getattr__(name: str):
    # Lazy: ``import dreamdist`` stays cheap (torch/diffusers load on first use).
    if name in _API:
        from dreamdist import api

        return getattr(api, name)
    raise AttributeError(f"module 'dreamdist' has no attribute {name!r}")


__all__ = list(_API)
