"""Data pipeline: sources -> byte-level BPE tokenizer -> token shards -> deterministic batches.

Modules: sources (files and documents), tokenizer, shards (writer, memmaps, windows), prepare (cached,
atomic dataset preparation), loader (batches as a pure function of seed and step).
"""
