"""Licenses of the training data: license files per source, SPDX identifiers and license headers per document,
what the user declared, and the documents or sources that have none or disagree.

Classification is by distinctive phrases of each license's text, which is enough to tell the common open
licenses apart; anything else is reported as found but unrecognized, never guessed.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from shoal.data.sources import STDLIB_SPEC
from shoal.errors import DataError

LICENSE_FILE = re.compile(r"^(?:licen[cs]e|copying|unlicense)(?:[-_.][\w.-]*)?$", re.IGNORECASE)
SPDX_HEADER = re.compile(r"SPDX-License-Identifier:\s*([A-Za-z0-9.+()\- ]+?)\s*(?:\*/|-->|$)", re.MULTILINE)

# (SPDX id, phrases that must all appear, lower-cased, whitespace collapsed); the first match wins, so the more
# specific texts come first (LGPL before GPL, BSD-3 before BSD-2).
_SIGNATURES = [
    ("Apache-2.0", ["apache license", "version 2.0"]),
    ("MPL-2.0", ["mozilla public license", "2.0"]),
    ("LGPL-3.0", ["gnu lesser general public license", "version 3"]),
    ("LGPL-2.1", ["gnu lesser general public license", "version 2.1"]),
    ("AGPL-3.0", ["gnu affero general public license", "version 3"]),
    # The GPL by its dated title or its header: texts that merely mention the GPL (CPython's LICENSE does) are not it.
    ("GPL-3.0", ["gnu general public license", "version 3, 29 june 2007"]),
    ("GPL-3.0", ["gnu general public license as published by the free software foundation, either version 3"]),
    ("GPL-2.0", ["gnu general public license", "version 2, june 1991"]),
    ("GPL-2.0", ["gnu general public license as published by the free software foundation; either version 2"]),
    ("PSF-2.0", ["python software foundation license", "version 2"]),
    ("PSF-2.0", ["psf license agreement"]),
    ("BSD-3-Clause", ["redistribution and use in source and binary forms", "neither the name"]),
    ("BSD-2-Clause", ["redistribution and use in source and binary forms", "this list of conditions"]),
    ("MIT", ["permission is hereby granted, free of charge", "the above copyright notice"]),
    ("ISC", ["permission to use, copy, modify, and/or distribute this software for any purpose"]),
    ("Unlicense", ["this is free and unencumbered software released into the public domain"]),
    ("CC0-1.0", ["cc0 1.0 universal"]),
    ("CC-BY-SA-4.0", ["creative commons attribution-sharealike 4.0"]),
    ("CC-BY-4.0", ["creative commons attribution 4.0"]),
]
HEADER_CHARS = 3000  # license headers sit at the top of a file


def classify(text: str) -> str | None:
    """SPDX id of a license text (a license file or a header), or None if not recognized."""
    flat = " ".join(text.lower().split())
    for spdx, phrases in _SIGNATURES:
        if all(p in flat for p in phrases):
            return spdx
    return None


def document_license(text: str) -> str | None:
    """The license a document states about itself: an SPDX-License-Identifier line, else a recognized header."""
    head = text[:HEADER_CHARS]
    match = SPDX_HEADER.search(head)
    if match:
        return match.group(1).strip()
    return classify(head)


@dataclass
class SourceLicenses:
    source: str
    declared: str | None = None  # what the user's config says
    files: dict[str, str | None] = field(default_factory=dict)  # license file -> SPDX id (None: unrecognized)
    documents: Counter = field(default_factory=Counter)  # SPDX id stated by documents -> count
    unlicensed_documents: int = 0
    conflicts: list[tuple[str, str]] = field(default_factory=list)  # (document, its SPDX id) against the source's

    @property
    def license(self) -> str | None:
        """The source's license: declared, else the one its license files agree on."""
        if self.declared:
            return self.declared
        found = {spdx for spdx in self.files.values() if spdx}
        return found.pop() if len(found) == 1 else None

    @property
    def problems(self) -> list[str]:
        out = []
        found = {spdx for spdx in self.files.values() if spdx}
        if not self.declared and len(found) > 1:
            out.append(f"license files disagree: {', '.join(sorted(found))}")
        if self.license is None and not (not self.declared and len(found) > 1):
            out.append("no license found or declared")
        if self.conflicts:
            out.append(f"{len(self.conflicts)} documents state a license other than {self.license}")
        return out

    def add_document(self, name: str, text: str) -> None:
        spdx = document_license(text)
        if spdx is None:
            self.unlicensed_documents += 1
            return
        self.documents[spdx] += 1
        if self.license and not same_license(spdx, self.license):
            self.conflicts.append((name, spdx))


def same_license(a: str, b: str) -> bool:
    """SPDX ids naming the same license: case aside, and "GPL-3.0", "GPL-3.0-only", "GPL-3.0-or-later", "GPL-3.0+"
    as one family (a document may allow later versions of its source's license)."""
    def family(spdx: str) -> str:
        return re.sub(r"(-only|-or-later|\+)$", "", spdx.strip().lower())
    return family(a) == family(b)


def license_files(folder: Path, max_files: int = 20) -> dict[str, str | None]:
    """License files at the top of a source folder and one level below (vendored packages), classified."""
    found: dict[str, str | None] = {}
    for level in (folder.glob("*"), folder.glob("*/*")):
        for path in sorted(level):
            if len(found) >= max_files:
                return found
            if path.is_file() and LICENSE_FILE.match(path.name):
                try:
                    found[str(path.relative_to(folder))] = classify(path.read_text(encoding="utf-8", errors="replace"))
                except OSError:
                    found[str(path.relative_to(folder))] = None
    return found


KNOWN_LICENSES = {STDLIB_SPEC: "PSF-2.0"}  # the default corpus: the Python standard library


def source_key(spec: str) -> str:
    """Sources compare by absolute path ("./corpus/" and "corpus" are one source)."""
    return spec if spec == STDLIB_SPEC else os.path.abspath(spec)


def parse_declared_licenses(items: list[str], sources: list[str]) -> dict[str, str]:
    """`SOURCE=SPDX` declarations (config `data.licenses`, `--license`) keyed by source_key; each must name a source."""
    declared = {}
    for item in items:
        source, sep, spdx = item.rpartition("=")
        if not sep or not source or not spdx:
            raise DataError(f"a license declaration (--license or data.licenses) must look like SOURCE=SPDX "
                            f"(e.g. ./corpus=MIT), got {item!r}")
        declared[source_key(source)] = spdx
    unknown = sorted(set(declared) - {source_key(s) for s in sources})
    if unknown:
        raise DataError(f"a license is declared for {', '.join(unknown)}, which is not among the sources "
                        f"({', '.join(sources)}); declare licenses for listed sources only")
    return {**{source_key(k): v for k, v in KNOWN_LICENSES.items()}, **declared}
