"""ExtensionsIndex/KneeSegmentation.json: the catalog entry to submit to Slicer's Extensions Index.

It is checked against the index's own JSON schema (``../shared/slicer_python/ExtensionsIndex/schemas``;
skipped with the reason when absent) and against the extension's CMake metadata.
"""

import json
import os
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ENTRY = REPO / "ExtensionsIndex" / "KneeSegmentation.json"
_SLICER_PYTHON = os.environ.get("KNEESEG_SLICER_PYTHON", str(REPO.parent / "shared" / "slicer_python"))
INDEX = Path(_SLICER_PYTHON) / "ExtensionsIndex"  # KNEESEG_SLICER_PYTHON=none: as in CI, skipped


def _cmake(var):
    return re.search(rf'set\({var} "([^"]*)"\)', (REPO / "CMakeLists.txt").read_text()).group(1)


def _schema(entry):
    name = entry["$schema"].rstrip("#").rsplit("/", 1)[1]
    path = INDEX / "schemas" / name
    if not path.is_file():
        pytest.skip(f"the Extensions Index schema {name} is not available ({path} is absent)")
    return json.loads(path.read_text())


def test_the_entry_validates_against_the_extensions_index_schema():
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is not installed (requirements.txt)")
    entry = json.loads(ENTRY.read_text())
    schema = _schema(entry)
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.validate(entry, schema)
    for example in sorted(INDEX.glob("*.json")):  # the index's own entries pass the same check
        jsonschema.validate(json.loads(example.read_text()), _schema(json.loads(example.read_text())))
    for broken in ({**entry, "tier": 9}, {k: v for k, v in entry.items() if k != "scm_url"}, {**entry, "homepage": "x"}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, schema)


def test_the_entry_agrees_with_the_cmake_metadata():
    entry = json.loads(ENTRY.read_text())
    assert entry["category"] == _cmake("EXTENSION_CATEGORY")
    assert entry["scm_url"] == _cmake("EXTENSION_HOMEPAGE")
    assert entry["build_subdirectory"] == "." and (REPO / "CMakeLists.txt").is_file()


def test_the_screenshots_and_icon_named_in_cmake_exist_in_the_repository():
    homepage = _cmake("EXTENSION_HOMEPAGE")
    raw = homepage.replace("https://github.com/", "https://raw.githubusercontent.com/") + "/main/"
    urls = _cmake("EXTENSION_SCREENSHOTURLS").split() + [_cmake("EXTENSION_ICONURL")]
    assert len(urls) >= 3
    for url in urls:
        assert url.startswith(raw), url
        assert (REPO / url[len(raw):]).is_file(), f"{url} names a file that is not in the repository"
