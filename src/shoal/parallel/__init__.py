"""Distributed training on PyTorch's own engine: launch (torchrun), the process group, the device mesh, and the
layouts (FSDP2, HSDP, tensor parallel, activation checkpointing, per-block compile) applied to an unchanged model."""
