"""Which documents `shoal eval` scores: given sources (`--data`), or by default the validation split of the data
a run was trained on (the same held-out documents its validation loss used, now scored one by one)."""

from __future__ import annotations

from collections.abc import Iterator

from tokenizers import Tokenizer

from shoal.bundle import LoadedModel
from shoal.config import config_from_dict
from shoal.data.prepare import prepare_dataset
from shoal.data.prepared import PreparedData
from shoal.data.sources import iter_documents, resolve_sources
from shoal.errors import ShoalError


def evaluation_documents(model: LoadedModel, data: list[str]) -> tuple[str, Iterator[tuple[str, str]]]:
    """(description, (name, text) documents) for `model`."""
    if data:
        files = resolve_sources(data, key="--data")
        return ", ".join(data), ((doc.origin, doc.text) for doc in iter_documents(files))
    if "config" not in model.info:
        raise ShoalError(f"{model.info.get('source', 'the model')} is a bundle: name the documents to evaluate on "
                         "with --data (a folder, a file or \"stdlib\")")
    cfg = config_from_dict(model.info["config"])
    prepared = prepare_dataset(cfg.data, progress=False)  # cached: finds the run's prepared folder
    return f"validation split of dataset {prepared.fingerprint[:16]}", _split_documents(prepared,
                                                                                       model.tokenizer)


def _split_documents(prepared: PreparedData, tokenizer: Tokenizer) -> Iterator[tuple[str, str]]:
    """The validation documents as text (byte-level BPE decodes exactly)."""
    for index, ids in enumerate(prepared.documents("val")):
        yield f"val/{index}", tokenizer.decode(ids.tolist(), skip_special_tokens=False)
