"""`shoal data prepare` applies the fixes: one document per duplicate cluster, personal data replaced by markers,
training/evaluation overlap removed, licenses declared in the config; and writes the dataset card."""

import json
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from shoal.config import load_config
from shoal.data.prepare import prepare_dataset
from shoal.data.split import TRAIN, VAL, split_of
from shoal.errors import DataError

from ...cli.test_cli import assert_one_line_error, shoal

VAL_FRACTION = 0.2
WORDS = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau upsilon "
         "phi chi psi omega river stone cloud ember maple quartz violet harbor lantern meadow").split()


def prose(seed: int, words: int = 400) -> str:
    rng = np.random.default_rng(seed)
    return " ".join(rng.choice(WORDS, size=words)) + "\n"


def landing_in(split: str, text: str) -> str:
    """`text` with a numbered last line chosen so that the document falls into `split`."""
    for i in range(10_000):
        candidate = f"{text}# variant {i}\n"
        if split_of(candidate, VAL_FRACTION) == split:
            return candidate
    raise AssertionError("no variant found")


@pytest.fixture
def corpus(tmp_path) -> dict[str, Path]:
    root = tmp_path / "corpus"
    root.mkdir()
    for i in range(12):
        (root / f"doc{i:02d}.txt").write_text(landing_in(TRAIN, prose(i)))
    original = prose(100)
    (root / "original.txt").write_text(landing_in(TRAIN, original))
    (root / "zz_near_copy.txt").write_text(landing_in(TRAIN, original.replace("alpha", "ALPHA", 1)))  # Jaccard ~0.99
    (root / "contact.txt").write_text(landing_in(TRAIN, prose(101) + "write to jane.doe@company.org today\n"))
    held_out = prose(102)
    (root / "val_doc.txt").write_text(landing_in(VAL, prose(103)))
    (root / "val_copy_of_train.txt").write_text(landing_in(VAL, prose(0)[:1500]))  # training text in validation
    (root / "train_copy_of_eval.txt").write_text(landing_in(TRAIN, held_out + "and a few words more\n"))
    evaluation = tmp_path / "eval"
    evaluation.mkdir()
    (evaluation / "test_set.txt").write_text(held_out)
    return {"root": root, "eval": evaluation, "tmp": tmp_path}


def config(corpus, *overrides):
    return load_config("tiny", [f'data.sources=["{corpus["root"]}"]', f'data.prepared_dir="{corpus["tmp"] / "prepared"}"',
                                f"data.val_fraction={VAL_FRACTION}", "data.vocab_size=300",
                                f'data.eval_sources=["{corpus["eval"]}"]', *overrides])


def decoded(prepared, split: str) -> str:
    tok = Tokenizer.from_file(str(prepared.tokenizer_path))
    ids = np.concatenate([np.fromfile(prepared.folder / s["file"], dtype=prepared.manifest["dtype"])
                          for s in prepared.manifest["shards"][split]])
    return tok.decode(ids.tolist(), skip_special_tokens=False)


def test_prepare_removes_duplicates_contamination_and_personal_data(corpus):
    prepared = prepare_dataset(config(corpus).data, progress=False)
    removed = prepared.manifest["filters"]["removed"]
    assert removed["duplicates"]["documents"] == 1 and removed["duplicates"]["examples"][0].endswith("near_copy.txt")
    assert removed["validation documents made of training text"]["examples"] == [f"{corpus['root']}/val_copy_of_train.txt"]
    assert removed["training documents made of evaluation text"]["examples"] == [
        f"{corpus['root']}/train_copy_of_eval.txt"]
    assert prepared.manifest["documents"] == {"train": 14, "val": 1}  # 16 - a duplicate - a copy of evaluation text
    assert prepared.manifest["filters"]["eval_sources"] == {"documents": 1, "contaminated": 1}
    train = decoded(prepared, "train")
    assert "jane.doe@company.org" not in train and "<EMAIL>" in train
    assert prepared.manifest["filters"]["personal_data"]["redacted"]["email"] == 1

    card = (prepared.folder / "dataset_card.md").read_text()
    assert prepared.fingerprint in card and "| duplicates | 1 |" in card and "<EMAIL>" in card
    assert "no license found or declared" in card  # a folder without a license file, and none declared


def test_filters_can_be_turned_off_and_change_the_fingerprint(corpus):
    on = prepare_dataset(config(corpus).data, progress=False)
    off = prepare_dataset(config(corpus, "data.dedup=false", "data.redact_pii=false", "data.decontaminate=false").data,
                          progress=False)
    assert off.fingerprint != on.fingerprint
    assert off.manifest["documents"] == {"train": 16, "val": 2}
    assert all(r["documents"] == 0 for r in off.manifest["filters"]["removed"].values())
    assert "jane.doe@company.org" in decoded(off, "train")
    card = (off.folder / "dataset_card.md").read_text()
    assert "Duplicates were not removed" in card and "were not checked for overlap" in card
    # The evaluation set is an input: changing it is another dataset.
    (corpus["eval"] / "test_set.txt").write_text(prose(555))
    assert prepare_dataset(config(corpus).data, progress=False).fingerprint != on.fingerprint


def test_a_split_emptied_by_the_filters_is_a_clear_error(corpus):
    (corpus["root"] / "val_doc.txt").unlink()  # the only validation document left is a copy of training text
    with pytest.raises(DataError, match="the validation split is empty: the filters removed all 1 of its documents"):
        prepare_dataset(config(corpus).data, progress=False)


def test_an_edited_card_is_not_taken_for_the_prepared_one(corpus):
    from shoal.data.prepared import load_prepared

    prepared = prepare_dataset(config(corpus).data, progress=False)
    (prepared.folder / "dataset_card.md").write_text("# something else\n")
    with pytest.raises(DataError, match="dataset_card.md missing or changed"):
        load_prepared(prepared.folder)


def test_declared_licenses_reach_the_manifest_and_card(corpus):
    prepared = prepare_dataset(config(corpus, f'data.licenses=["{corpus["root"]}=CC-BY-4.0"]').data, progress=False)
    assert prepared.manifest["sources"][0]["license"] == "CC-BY-4.0"
    assert "| CC-BY-4.0 |" in (prepared.folder / "dataset_card.md").read_text()


@pytest.mark.parametrize("licenses, words", [
    ('["MIT"]', "must look like SOURCE=SPDX"),
    ('["elsewhere=MIT"]', "not among the sources"),
])
def test_bad_license_declarations_are_refused_before_any_work(corpus, licenses, words):
    with pytest.raises(DataError, match=words):
        prepare_dataset(config(corpus, f"data.licenses={licenses}").data, progress=False)
    assert not (corpus["tmp"] / "prepared").exists()


def test_cli_prepare_reports_removals_and_a_missing_eval_source(corpus):
    sets = [a for o in [f'data.sources=["{corpus["root"]}"]', f'data.prepared_dir="{corpus["tmp"] / "p"}"',
                        f"data.val_fraction={VAL_FRACTION}", "data.vocab_size=300",
                        f'data.eval_sources=["{corpus["eval"]}"]'] for a in ("--set", o)]
    result = shoal("data", "prepare", *sets)
    assert result.returncode == 0, result.stderr
    assert "removed: 1 duplicates, 1 training documents made of evaluation text" in result.stdout
    missing = [a if "eval" not in a else f'data.eval_sources=["{corpus["tmp"] / "nope"}"]' for a in sets]
    assert_one_line_error(shoal("data", "prepare", *missing), "nope", "data.eval_sources")
    assert json.loads(next((corpus["tmp"] / "p").glob("*/manifest.json")).read_text())["documents"]["val"] == 1


def test_filters_decide_the_same_with_worker_processes(corpus, monkeypatch):
    import shutil

    from shoal.data.governance import filtering

    one = prepare_dataset(config(corpus).data, progress=False)
    shutil.rmtree(one.folder)
    monkeypatch.setattr(filtering, "PARALLEL_BYTES", 0)  # use the worker pool even on this small corpus
    many = prepare_dataset(config(corpus).data, progress=False)
    assert many.manifest["filters"] == one.manifest["filters"]
    assert many.manifest["shards"] == one.manifest["shards"]  # same tokens, checksum for checksum
