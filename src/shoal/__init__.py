"""shoal: train transformer language models, export them and sample from them."""

__version__ = "0.1.0"
