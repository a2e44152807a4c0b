"""dreamdist: learn a distribution of prompts from reference images and generate from it."""

__version__ = "0.1.0"
