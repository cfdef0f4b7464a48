"""shoal: train, evaluate, compress, version and serve language models."""

__version__ = "0.1.0"
