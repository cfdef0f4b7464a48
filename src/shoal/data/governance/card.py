"""The dataset card: a Markdown datasheet written beside every prepared dataset, from its manifest.

It says what the data is (sources, sizes, licenses), what was done to it (each filter and what it removed) and
what is known to be risky about it, and it carries the fingerprint that runs and exported models record, so a
model can be traced back to this exact data.
"""

from __future__ import annotations

from typing import Any

CARD_FILE = "dataset_card.md"


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *["| " + " | ".join(str(c) for c in row) + " |" for row in rows]]


def render_card(m: dict[str, Any]) -> str:
    f = m["filters"]
    settings = f["settings"]
    lines = [f"# Dataset card — {m['fingerprint'][:16]}", "",
             f"Fingerprint (sha256 of every input file and every setting): `{m['fingerprint']}`  ",
             f"Prepared {m['created']}; tokenizer: byte-level BPE, {m['vocab_size']:,} tokens "
             f"(sha256 `{m['tokenizer_sha256'][:16]}…`).", "", "## Sources", ""]
    lines += _table(["source", "files", "MB", "license"],
                    [[f"`{s['spec']}`", f"{s['files']:,}", f"{s['bytes'] / 1e6:.2f}", s.get("license") or "**unknown**"]
                     for s in m["sources"]])
    lines += ["", "## Contents", ""]
    lines += _table(["split", "documents", "tokens", "MB"],
                    [[split, f"{m['documents'][split]:,}", f"{m['tokens'][split]:,}", f"{m['bytes'][split] / 1e6:.2f}"]
                     for split in ("train", "val")])
    lines += ["", f"Validation: documents whose text hashes below {m['settings']['val_fraction']:.0%} of the hash range "
              "(stable whatever else is added); exact copies always share a split.", "", "## Filters applied", ""]
    on = {True: "on", False: "off"}
    lines += [f"- near-duplicates (MinHash LSH, 5-word shingles, Jaccard ≥ {settings['near_duplicate_threshold']}): "
              f"{on[settings['dedup']]}",
              f"- personal data and secrets replaced by typed markers (`<EMAIL>`, `<IP_ADDRESS>`, …): "
              f"{on[settings['redact_pii']]}",
              f"- training/evaluation overlap ({settings['ngram']}-grams, ≥ {settings['contamination_threshold']:.0%} "
              f"of a document): {on[settings['decontaminate']]}"
              + (f"; evaluation sources: {', '.join(f'`{s}`' for s in settings['eval_sources'])}"
                 if settings["eval_sources"] and settings["decontaminate"] else ""), ""]
    removed = [[reason, f"{r['documents']:,}", f"{r['bytes'] / 1e6:.3f}", ", ".join(f"`{e}`" for e in r["examples"][:3])]
               for reason, r in f["removed"].items()]
    lines += _table(["removed", "documents", "MB", "for example"], removed)
    pii = f["personal_data"]
    kind = "redacted" if "redacted" in pii else "found"
    counts = ", ".join(f"{n:,} {k.replace('_', ' ')}" for k, n in pii[kind].items() if n) or "none"
    lines += ["", f"Personal data and secrets {kind} in {pii['documents']:,} kept documents: {counts}.", "",
              "## Known risks", ""]
    risks = []
    for entry in f["licenses"]:
        for problem in entry["problems"]:
            risks.append(f"License of `{entry['source']}`: {problem}.")
    if not settings["redact_pii"] and pii["documents"]:
        risks.append(f"{pii['documents']:,} documents contain personal data or secrets that were not redacted.")
    if settings["redact_pii"]:
        risks.append("Redaction finds the patterns it knows (e-mail, IP, phone, API keys, private keys, assigned "
                     "passwords); names, postal addresses and free-form secrets are not detected.")
    if f["eval_sources"]["documents"]:
        e = f["eval_sources"]
        risks.append(f"{e['contaminated']:,} of {e['documents']:,} evaluation-source documents shared ≥ "
                     f"{settings['contamination_threshold']:.0%} of their {settings['ngram']}-grams with the training "
                     "split before filtering; training documents made of evaluation text were removed.")
    if not settings["decontaminate"]:
        risks.append("Training and validation text were not checked for overlap: the validation loss may flatter.")
    if not settings["dedup"]:
        risks.append("Duplicates were not removed: repeated documents weigh more in training.")
    lines += [f"- {r}" for r in risks] or ["- none recorded"]
    return "\n".join(lines) + "\n"
