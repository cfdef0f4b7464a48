"""Licenses: files and headers recognized, declarations honoured, missing and conflicting licenses flagged."""

import sysconfig
from pathlib import Path

import pytest

from shoal.data.governance.licenses import SourceLicenses, classify, document_license, license_files

MIT = """MIT License\n\nCopyright (c) 2024 Someone\n\nPermission is hereby granted, free of charge, to any person
obtaining a copy of this software ... The above copyright notice and this permission notice shall be included"""
APACHE = "                                 Apache License\n                           Version 2.0, January 2004\n"
GPL3 = "GNU GENERAL PUBLIC LICENSE\n Version 3, 29 June 2007\n"
LGPL21 = "GNU LESSER GENERAL PUBLIC LICENSE\nVersion 2.1, February 1999"
BSD3 = ("Redistribution and use in source and binary forms, with or without modification, are permitted provided that "
        "... this list of conditions ... Neither the name of the copyright holder nor the names")


@pytest.mark.parametrize("text, spdx", [(MIT, "MIT"), (APACHE, "Apache-2.0"), (GPL3, "GPL-3.0"), (LGPL21, "LGPL-2.1"),
                                        (BSD3, "BSD-3-Clause"), ("All rights reserved.", None),
                                        ("released under the GNU General Public License (GPL), version 2 compatible",
                                         None)])
def test_classify(text, spdx):
    assert classify(text) == spdx


@pytest.mark.parametrize("text, spdx", [
    ("# SPDX-License-Identifier: MIT\nimport os\n", "MIT"),
    ("/* SPDX-License-Identifier: Apache-2.0 OR MIT */\nint x;", "Apache-2.0 OR MIT"),
    ("# Licensed under the Apache License, Version 2.0 (the \"License\");\nx = 1", "Apache-2.0"),
    ("x = 1\n" * 2000 + "# SPDX-License-Identifier: MIT\n", None),  # not in the header
    ("def f():\n    return 1\n", None),
])
def test_document_license(text, spdx):
    assert document_license(text) == spdx


def test_a_source_with_a_license_file_flags_documents_that_state_another(tmp_path):
    (tmp_path / "LICENSE").write_text(MIT)
    (tmp_path / "vendored").mkdir()
    (tmp_path / "vendored" / "COPYING.txt").write_text(MIT)
    (tmp_path / "NOTES.md").write_text("not a license")
    source = SourceLicenses(str(tmp_path), files=license_files(tmp_path))
    assert source.files == {"LICENSE": "MIT", "vendored/COPYING.txt": "MIT"} and source.license == "MIT"
    source.add_document("a.py", "# SPDX-License-Identifier: MIT\n")
    source.add_document("b.py", "# SPDX-License-Identifier: GPL-3.0-only\n")
    source.add_document("c.py", "print('hi')\n")
    assert source.documents == {"MIT": 1, "GPL-3.0-only": 1} and source.unlicensed_documents == 1
    assert source.conflicts == [("b.py", "GPL-3.0-only")]
    assert source.problems == ["1 documents state a license other than MIT"]


def test_the_python_standard_library_is_psf_licensed():
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    if not (stdlib / "LICENSE.txt").is_file():
        pytest.skip("this Python's distribution keeps its license elsewhere (e.g. /usr/share/doc)")
    assert license_files(stdlib) == {"LICENSE.txt": "PSF-2.0"}


def test_versions_of_one_license_do_not_conflict():
    source = SourceLicenses("repo", declared="GPL-3.0")
    for header in ("GPL-3.0-or-later", "GPL-3.0-only", "gpl-3.0+", "MIT"):
        source.add_document(header, f"# SPDX-License-Identifier: {header}\n")
    assert source.conflicts == [("MIT", "MIT")]


def test_missing_disagreeing_and_declared_licenses(tmp_path):
    assert SourceLicenses("bare").problems == ["no license found or declared"]
    disagree = SourceLicenses("mixed", files={"LICENSE": "MIT", "sub/LICENSE": "GPL-3.0"})
    assert disagree.license is None and disagree.problems == ["license files disagree: GPL-3.0, MIT"]
    declared = SourceLicenses("mixed", declared="MIT", files={"LICENSE": "MIT", "sub/LICENSE": "GPL-3.0"})
    assert declared.license == "MIT" and declared.problems == []
    stdlib = SourceLicenses("stdlib", declared="PSF-2.0")
    assert stdlib.license == "PSF-2.0" and stdlib.problems == []
