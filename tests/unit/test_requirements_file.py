"""What the worker accepts of a bundle's requirements.txt, and what a task gets of it."""

from __future__ import annotations

from pathlib import Path

import pytest

from hivemind_cluster.agent.requirements import NO_DEPS, Deps, cache_key, wanted_by
from hivemind_cluster.agent.wheels import RequirementsUnmet, reason
from tests.support.scratch import zip_of


def test_requirements_by_name_and_version_are_taken_comments_dropped() -> None:
    text = (
        "# data\nnumpy>=1.26  # fast\n\npandas==2.3.3; python_version >= '3.10'\nRequests[socks]\n"
    )
    assert wanted_by(zip_of({"main.py": "", "requirements.txt": text})) == [
        "numpy>=1.26",
        'pandas==2.3.3; python_version >= "3.10"',
        "Requests[socks]",
    ]


def test_a_bundle_without_a_top_level_requirements_file_wants_nothing() -> None:
    assert wanted_by(b"") == []
    assert wanted_by(zip_of({"main.py": "", "sub/requirements.txt": "numpy"})) == []
    assert wanted_by(zip_of({"requirements.txt": "# nothing\n\n"})) == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("-r /etc/shadow", "line 1: options are not supported here"),
        ("numpy\n--extra-index-url http://x/", "line 2: options are not supported here"),
        ("-e .", "options are not supported"),
        ("numpy \\", "options are not supported"),
        ("pkg @ https://example.org/pkg.whl", "a URL or path cannot be installed"),
        ("./local_dir", "requirements.txt line 1:"),
        ("numpy ((", "requirements.txt line 1:"),
    ],
)
def test_options_urls_and_nonsense_are_refused(text: str, expected: str) -> None:
    with pytest.raises(RequirementsUnmet) as refused:
        wanted_by(zip_of({"requirements.txt": text}))
    assert expected in refused.value.message and "\n" not in refused.value.message


def test_a_file_that_is_too_large_or_not_text_is_refused() -> None:
    with pytest.raises(RequirementsUnmet, match="larger than 64 KiB"):
        wanted_by(zip_of({"requirements.txt": "numpy\n" * 20_000}))
    with pytest.raises(RequirementsUnmet, match="not UTF-8"):
        wanted_by(zip_of({"requirements.txt": b"\xff\xfe"}))


def test_the_cache_key_names_image_index_and_requirements() -> None:
    key = cache_key("sha256:" + "ab" * 32, "", ["numpy"])
    assert key.startswith("abababababababab-") and "/" not in key
    assert key != cache_key("sha256:" + "cd" * 32, "", ["numpy"])
    assert key != cache_key("sha256:" + "ab" * 32, "http://index/simple/", ["numpy"])
    assert key != cache_key("sha256:" + "ab" * 32, "", ["numpy", "pandas"])


def test_deps_are_mounted_read_only_after_the_tasks_own_path() -> None:
    deps = Deps(Path("/state/requirements/k"))
    assert deps.mounts() == {"/state/requirements/k": {"bind": "/deps", "mode": "ro"}}
    assert deps.environment({"PYTHONPATH": "/work", "A": "1"}) == {
        "PYTHONPATH": "/work:/deps",
        "A": "1",
    }
    assert deps.environment({}) == {"PYTHONPATH": "/deps"}
    assert NO_DEPS.mounts() == {} and NO_DEPS.environment({"A": "1"}) == {"A": "1"}


def test_pips_reason_is_its_first_error_line() -> None:
    lines = ["Collecting x", "ERROR: Could not find a version for x", "ERROR: No matching"]
    assert reason(lines, 1) == "Could not find a version for x"
    assert reason(["Installing collected packages: x"], 137) == (
        "pip exited with status 137 (killed: out of memory) after "
        "'Installing collected packages: x'"
    )
    assert reason([], 2) == "pip exited with status 2"
