"""`shoal data audit`: one streaming pass over a corpus (and one more for trigger phrases) running every detector,
then a report in JSON, Markdown and a PNG.

The per-document work (personal data, features, MinHash signatures) runs in worker processes, in corpus order;
the order-dependent parts (duplicate clusters, indexes) run in the main process, so the report is the same
whatever the number of workers. Documents are never kept: memory holds a signature and a few numbers per
document, and hashes of the corpus's n-grams (8 bytes per distinct 13-gram for contamination, and per document and
distinct 3-gram until the trigger finder's first pass ends), about as much as the text itself for the largest.
"""

from __future__ import annotations

import functools
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from shoal.data.governance.contamination import NgramIndex
from shoal.data.governance.dedup import Deduplicator, content_hash, signature
from shoal.data.governance.licenses import SourceLicenses, license_files, parse_declared_licenses, source_key
from shoal.data.governance.pii import MARKERS, find_personal_data
from shoal.data.governance.poisoning import TriggerFinder, document_features, robust_outliers
from shoal.data.governance.reading import ReadLog, read_documents, resolve_tolerantly
from shoal.data.governance.workers import analyzed, default_workers
from shoal.data.progress import PhaseProgress
from shoal.data.sources import STDLIB_SPEC, stdlib_dir
from shoal.errors import DataError
from shoal.io import atomic_write_json, atomic_write_text, check_can_create_dir, ensure_writable_dir

FORMAT = "shoal.audit/1"


@dataclass(frozen=True)
class AuditSettings:
    shingle_size: int = 5
    num_perm: int = 128
    near_duplicate_threshold: float = 0.8
    ngram: int = 13
    contamination_threshold: float = 0.2
    trigger_ngram: int = 3
    trigger_min_documents: int = 5
    outlier_z: float = 6.0
    max_line_chars: int = 1_000_000


def _analyze(text: str, s: AuditSettings) -> tuple[list[tuple[str, int, int]], dict[str, float], str, Any]:
    """Worker: the per-document findings (no text of a finding travels back, only its kind and place)."""
    findings = [(f.kind, f.start, f.end) for f in find_personal_data(text)]
    return findings, document_features(text), content_hash(text), signature(text, s.shingle_size, s.num_perm)


def _mask(text: str) -> str:
    """Enough of a finding to locate it, not enough to leak it."""
    return text[:2] + "…" if len(text) > 2 else "…"


def _file_of(origin: str, files: dict[str, str]) -> str:
    """The file a document came from: its origin, or the origin without ":line" / ":row" (JSONL, Parquet)."""
    return origin if origin in files else origin.rsplit(":", 1)[0]


def audit(sources: list[str], out_dir: str | Path, eval_sources: list[str] | None = None, glob: str = "**/*",
          declared: list[str] | None = None, settings: AuditSettings = AuditSettings(), workers: int = 0,
          progress: bool = True) -> dict[str, Any]:
    """Audit `sources` (and contamination of `eval_sources`); writes report.json, report.md and audit.png."""
    start = time.perf_counter()
    workers = workers if workers > 0 else default_workers()
    check_can_create_dir(out_dir)  # every refusal comes before anything is written
    declared_by_source = parse_declared_licenses(declared or [], sources)
    log = ReadLog()
    files = resolve_tolerantly(sources, glob, log)
    if not files:
        raise DataError(f"no files found in {', '.join(sources)}; check the paths and --glob")
    source_of_file = {str(sf.path): sf.source for sf in files}
    licenses = {spec: SourceLicenses(spec, declared_by_source.get(source_key(spec))) for spec in dict.fromkeys(sources)}
    for spec, entry in licenses.items():
        if spec != STDLIB_SPEC and Path(spec).is_dir():
            entry.files = license_files(Path(spec))
    total_bytes = sum(sf.path.stat().st_size for sf in files if sf.path.exists())

    dedup = Deduplicator(settings.shingle_size, settings.num_perm, settings.near_duplicate_threshold)
    index = NgramIndex(settings.ngram)
    triggers = TriggerFinder(settings.trigger_ngram, settings.trigger_min_documents)
    features: dict[str, dict[str, float]] = {}
    pii_counts, pii_documents, pii_examples = Counter(), 0, []
    with PhaseProgress(progress) as bar:
        bar.phase("auditing", total_bytes)
        for doc, (found, feats, digest, signature) in analyzed(read_documents(files, log, settings.max_line_chars),
                                                               functools.partial(_analyze, s=settings), workers):
            bar.advance(len(doc.text))
            dedup.add_signed(doc.origin, digest, signature)
            index.add(doc.text)
            triggers.count(doc.text)
            features[doc.origin] = feats
            licenses[source_of_file[_file_of(doc.origin, source_of_file)]].add_document(doc.origin, doc.text)
            if found:
                pii_documents += 1
                pii_counts.update(kind for kind, _, _ in found)
                for kind, a, b in found[: max(0, 20 - len(pii_examples))]:
                    pii_examples.append({"document": doc.origin, "kind": kind, "masked": _mask(doc.text[a:b])})
        if log.documents == 0:
            raise DataError(f"no readable document in {', '.join(sources)} (skipped: "
                            f"{', '.join(f'{n} {r}' for r, n in log.skipped.items()) or 'nothing found'}); "
                            "check the paths and --glob")
        bar.phase("trigger phrases", total_bytes)
        for doc in read_documents(files, ReadLog(), settings.max_line_chars):
            triggers.inspect(doc.origin, doc.text)
            bar.advance(len(doc.text))
        contamination = None
        if eval_sources:
            eval_log = ReadLog()
            eval_files = resolve_tolerantly(eval_sources, glob, eval_log)
            bar.phase("contamination", sum(sf.path.stat().st_size for sf in eval_files if sf.path.exists()))
            overlaps = []
            for doc in read_documents(eval_files, eval_log, settings.max_line_chars):
                overlaps.append((doc.origin, index.overlap(doc.text)))
                bar.advance(len(doc.text))
            if not overlaps:
                raise DataError(f"no readable document in the evaluation sources {', '.join(eval_sources)}; "
                                "check the --eval paths")
            flagged = sorted((o for o in overlaps if o[1] >= settings.contamination_threshold), key=lambda o: -o[1])
            contamination = {"eval_sources": eval_sources, "eval_documents": len(overlaps),
                             "contaminated": len(flagged), "fraction": len(flagged) / max(1, len(overlaps)),
                             "skipped": dict(eval_log.skipped),
                             "examples": [{"document": d, "overlap": round(v, 3)} for d, v in flagged[:20]]}
        bar.done()

    clusters = dedup.duplicate_clusters()
    outliers = robust_outliers(features, settings.outlier_z)
    found_triggers = triggers.findings()
    report = {
        "format": FORMAT, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "sources": sources, "glob": glob,
        "settings": asdict(settings), "seconds": round(time.perf_counter() - start, 1), "workers": workers,
        "read": {"documents": log.documents, "bytes": log.bytes, "skipped": dict(log.skipped),
                 "skipped_examples": log.examples},
        "duplicates": {
            "exact_documents": sum(len(c.exact) for c in clusters), "near_documents": sum(len(c.near) for c in clusters),
            "clusters": len(clusters),
            "largest": [{"kept": c.kept, "size": c.size, "exact": c.exact[:5], "near": c.near[:5]} for c in clusters[:10]]},
        "personal_data": {"documents_with_findings": pii_documents,
                          "counts": {kind: pii_counts.get(kind, 0) for kind in MARKERS}, "examples": pii_examples},
        "licenses": [{"source": e.source, "license": e.license, "declared": e.declared, "files": e.files,
                      "documents_stating": dict(e.documents), "documents_without": e.unlicensed_documents,
                      "conflicts": [list(c) for c in e.conflicts[:10]], "problems": e.problems}
                     for e in licenses.values()],
        "contamination": contamination,
        "outliers": {"documents": len(outliers), "z_threshold": settings.outlier_z,
                     "examples": [asdict(o) for o in outliers[:20]]},
        "triggers": [{"phrase": t.phrase, "documents": len(t.documents), "examples": list(t.documents[:5]),
                      "cohesion": t.cohesion, "context_diversity": t.context_diversity} for t in found_triggers[:20]],
    }
    out_dir = ensure_writable_dir(out_dir)
    atomic_write_json(out_dir / "report.json", report)
    atomic_write_text(out_dir / "report.md", render_markdown(report))
    plot_audit(report, out_dir / "audit.png")
    return report


def _shorten(report: dict[str, Any]):
    """Paths in the Markdown relative to their source ("stdlib/json/decoder.py" rather than a long absolute path)."""
    roots = sorted(((str(stdlib_dir()) if s == STDLIB_SPEC else os.path.abspath(s)), s) for s in report["sources"])
    roots.sort(key=lambda r: -len(r[0]))

    def short(path: str) -> str:
        for root, name in roots:
            if path.startswith(root + os.sep):
                return name.rstrip("/") + path[len(root):]
        return path
    return short


def render_markdown(r: dict[str, Any]) -> str:
    read, dup, pii, short = r["read"], r["duplicates"], r["personal_data"], _shorten(r)
    lines = [f"# Data audit of {', '.join(r['sources'])}", "",
             f"{read['documents']:,} documents, {read['bytes'] / 1e6:.1f} MB, audited in {r['seconds']} s "
             f"({r['workers']} workers).", ""]
    if read["skipped"]:
        lines += ["Skipped: " + ", ".join(f"{n} {reason.replace('_', ' ')}" for reason, n in read["skipped"].items()), ""]
    lines += ["## Duplicates", "",
              f"{dup['exact_documents']} exact and {dup['near_documents']} near duplicates (Jaccard ≥ "
              f"{r['settings']['near_duplicate_threshold']} over {r['settings']['shingle_size']}-word shingles) in "
              f"{dup['clusters']} clusters.", ""]
    lines += [f"- `{short(c['kept'])}` and {c['size'] - 1} more, e.g. `{short((c['exact'] + c['near'])[0])}`"
              for c in dup["largest"]]
    lines += ["", "## Personal data and secrets", "", f"{pii['documents_with_findings']} documents with findings: "
              + ", ".join(f"{n} {kind.replace('_', ' ')}" for kind, n in pii["counts"].items()) + ".", ""]
    lines += [f"- `{short(e['document'])}`: {e['kind'].replace('_', ' ')} `{e['masked']}`" for e in pii["examples"][:10]]
    lines += ["", "## Licenses", "", "| source | license | files | documents stating one | problems |",
              "|---|---|---|---|---|"]
    for e in r["licenses"]:
        lines.append(f"| `{e['source']}` | {e['license'] or '—'}{' (declared)' if e['declared'] else ''} | "
                     f"{', '.join(f'{k}: {v}' for k, v in e['files'].items()) or '—'} | "
                     f"{sum(e['documents_stating'].values())} | {'; '.join(e['problems']) or 'none'} |")
    c = r["contamination"]
    lines += ["", "## Contamination", ""]
    lines += [f"{c['contaminated']} of {c['eval_documents']} evaluation documents ({c['fraction']:.1%}) share ≥ "
              f"{r['settings']['contamination_threshold']:.0%} of their {r['settings']['ngram']}-grams with the "
              f"training data.", ""] + [f"- `{e['document']}`: {e['overlap']:.0%}" for e in c["examples"][:10]] \
        if c else ["No evaluation sources given (--eval)."]
    lines += ["", "## Outliers and trigger phrases", "",
              f"{r['outliers']['documents']} statistical outliers (robust z ≥ {r['outliers']['z_threshold']}):", ""]
    lines += [f"- `{short(o['key'])}`: {o['feature']} = {o['value']:.3g} (z = {o['z']:.1f})"
              for o in r["outliers"]["examples"][:10]]
    lines += ["", f"{len(r['triggers'])} suspected trigger phrases (rare, cohesive, inserted in varied contexts):", ""]
    lines += [f"- \"{t['phrase']}\" in {t['documents']} documents, e.g. `{short(t['examples'][0])}`"
              for t in r["triggers"][:10]]
    return "\n".join(lines) + "\n"


def plot_audit(r: dict[str, Any], out_png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = {"exact duplicates": r["duplicates"]["exact_documents"], "near duplicates": r["duplicates"]["near_documents"],
            **{k.replace("_", " "): v for k, v in r["personal_data"]["counts"].items()},
            "contaminated eval docs": (r["contamination"] or {}).get("contaminated", 0),
            "outliers": r["outliers"]["documents"], "trigger-phrase docs": sum(t["documents"] for t in r["triggers"]),
            **{f"skipped: {k.replace('_', ' ')}": v for k, v in r["read"]["skipped"].items()}}
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(bars) + 1.2), dpi=120)
    names = list(bars)[::-1]
    ax.barh(names, [bars[n] for n in names], color="#4c72b0")
    for i, n in enumerate(names):
        ax.text(bars[n], i, f" {bars[n]:,}", va="center", fontsize=8)
    ax.set_xlabel("count")
    ax.set_title(f"data audit: {r['read']['documents']:,} documents")
    fig.tight_layout()
    tmp = out_png.with_name(f".{out_png.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(out_png)
