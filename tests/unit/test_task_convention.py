"""The original task convention, checked at submission: which file a bundle with no command
runs, what its task.json supplies (and that flags win over it), the refusals, and
``hivemind submit job.zip``."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from hivemind_cluster.client import poolcli
from hivemind_cluster.client.cli import build_hivemind_parser
from hivemind_cluster.client.inputs import plan_data
from hivemind_cluster.core.errors import InvalidInput, NotFound
from hivemind_cluster.core.settings import HubSettings
from hivemind_cluster.model.bundles import default_entrypoint
from hivemind_cluster.model.pricing import RateCard
from hivemind_cluster.model.resources import Resources
from hivemind_cluster.model.spec import TaskSpec, check_submission
from hivemind_cluster.model.submission import price_cap
from hivemind_cluster.protos import pool_pb2 as pb
from tests.support.scratch import zip_of
from tests.support.tasks import held_bundle

SETTINGS = HubSettings(state_dir="/nonexistent")
PYTHON_ENV = {"PYTHONUNBUFFERED": "1", "PYTHONPATH": "/work"}


def submitted(files: Mapping[str, str | bytes], **fields: Any) -> TaskSpec:
    """The pool's check of a submission of a bundle of ``files`` (held on the hub)."""
    with held_bundle(files) as data:
        assert data.bundle is not None
        request = pb.SubmitRequest(bundle_digest=data.bundle.digest, **fields)
        return check_submission(request, "op", SETTINGS, data)


def quoted(files: Mapping[str, str | bytes]) -> tuple[int, TaskSpec]:
    """What the web quotes for a submission of a bundle of ``files``, and the pool's check."""
    with held_bundle(files) as data:
        assert data.bundle is not None
        request = pb.SubmitRequest(bundle_digest=data.bundle.digest)
        bundle = data.files[data.bundle.digest]
        return price_cap(request, SETTINGS, bundle), check_submission(request, "op", SETTINGS, data)


def with_task_json(document: Any, **files: str) -> dict[str, str]:
    return {"main.py": "", **files, "task.json": json.dumps(document)}


@pytest.mark.parametrize(
    ("names", "entrypoint"),
    [
        (["run.py", "task_script.py", "main.py"], "main.py"),
        (["start.py", "script.py", "app.py", "run.py", "task_script.py"], "task_script.py"),
        (["start.py", "script.py", "app.py", "run.py"], "run.py"),
        (["start.py", "script.py", "app.py"], "app.py"),
        (["start.py", "script.py"], "script.py"),
        (["start.py", "zz.py"], "start.py"),
        (["zeta.py", "Beta.py", "alpha.py", "lib/aaa.py"], "Beta.py"),  # sorted by code point
        (["./zeta.py", "alpha.txt"], "zeta.py"),
        (["sub/main.py", "notes.py/", "README"], None),  # sub-directories and directories
        ([], None),
    ],
)
def test_the_entry_point_is_the_original_workers(names: list[str], entrypoint: str) -> None:
    assert default_entrypoint(names) == entrypoint


def test_a_bundle_with_no_command_runs_its_entry_point_unbuffered_on_pythonpath() -> None:
    spec = submitted({"zeta.py": "", "analysis.py": "", "data.csv": ""})
    assert (spec.image, spec.command) == ("hivemind/python:3.11", ["python", "/work/analysis.py"])
    assert spec.env == PYTHON_ENV
    spec = submitted({"task_script.py": ""}, env={"PYTHONPATH": "/work/lib"}, image="python:3.12")
    assert (spec.image, spec.command) == ("python:3.12", ["python", "/work/task_script.py"])
    assert spec.env == {"PYTHONPATH": "/work/lib", "PYTHONUNBUFFERED": "1"}


def test_a_given_command_runs_as_given() -> None:
    spec = submitted({"main.py": "", "data.csv": ""}, image="img", command=["cat", "data.csv"])
    assert (spec.image, spec.command, spec.env) == ("img", ["cat", "data.csv"], {})
    spec = submitted({"data.csv": ""}, image="img", command=["cat", "data.csv"])
    assert spec.command == ["cat", "data.csv"]


@pytest.mark.parametrize("image", ["", "hivemind/busybox:latest"])
def test_a_bundle_with_nothing_to_run_is_refused_naming_what_was_looked_for(image: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        submitted({"data.csv": "", "sub/main.py": ""}, image=image)
    message = refused.value.message
    assert message.startswith("nothing to run: no command was given")
    assert "main.py, task_script.py, run.py, app.py, script.py, start.py" in message
    assert "*.py at its top level" in message and "entrypoint in task.json" in message


def test_task_json_supplies_the_defaults() -> None:
    document = {
        "name": "a template",  # keys that map onto nothing are ignored
        "entrypoint": "./src/job.py",
        "image": "python:3.12-slim",
        "env": {"MODE": "fast"},
        "timeout": 120,
        "requirements": {"memory_gb": 1.5, "cpu": 2, "disk_type": "ssd"},
        "gpus": 1,
    }
    spec = submitted(with_task_json(document, **{"src/job.py": ""}))
    assert (spec.image, spec.command) == ("python:3.12-slim", ["python", "/work/src/job.py"])
    assert spec.env == {"MODE": "fast"} | PYTHON_ENV
    assert spec.request == Resources(2000, 3 << 29, 1)
    assert spec.timeout_seconds == 120
    spec = submitted(with_task_json({"cpu_cores": 0.25, "requirements": {"timeout_seconds": 9}}))
    assert (spec.request.cpu_millis, spec.timeout_seconds) == (250, 9)


def test_flags_and_api_fields_win_over_task_json() -> None:
    document = {
        "entrypoint": "other.py",
        "image": "python:3.12-slim",
        "env": {"MODE": "fast", "KEPT": "yes"},
        "timeout": 120,
        "requirements": {"memory_gb": 2, "cpu_cores": 2},
    }
    spec = submitted(
        with_task_json(document, **{"other.py": ""}),
        image="hivemind/busybox:latest",
        command=["true"],
        env={"MODE": "slow"},
        resources=pb.Resources(cpu_millis=500, memory_bytes=64 << 20),
        timeout_seconds=30,
    )
    assert (spec.image, spec.command) == ("hivemind/busybox:latest", ["true"])
    assert spec.env == {"MODE": "slow", "KEPT": "yes"}
    assert (spec.request, spec.timeout_seconds) == (Resources(500, 64 << 20, 0), 30)


def test_without_task_json_or_flags_the_hub_defaults_apply() -> None:
    spec = submitted({"main.py": ""})
    assert spec.request == Resources(SETTINGS.task_cpu_millis, SETTINGS.task_memory_bytes, 0)
    assert spec.timeout_seconds == SETTINGS.task_timeout


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{'entrypoint': 'main.py'}", "task.json is not valid JSON: Expecting property name"),
        ("", "task.json is not valid JSON"),
        ("[" * 60_000, "task.json is not valid JSON"),
        ('{"timeout": 1' + "0" * 5000 + "}", "task.json is not valid JSON"),
        ("[]", "task.json must hold a JSON object"),
        ('"main.py"', "task.json must hold a JSON object"),
        ('{"requirements": [1]}', "task.json: requirements must be an object, got [1]"),
        ('{"entrypoint": "missing.py"}', "entrypoint 'missing.py' is not a file in the bundle"),
        ('{"entrypoint": "../main.py"}', "entrypoint '../main.py' is not a file in the bundle"),
        ('{"entrypoint": "/work/main.py"}', "is not a file in the bundle"),
        ('{"entrypoint": "lib"}', "entrypoint 'lib' is not a file in the bundle"),
        ('{"entrypoint": ["main.py"]}', 'task.json: entrypoint must be a string, got ["main.py"]'),
        ('{"image": 3}', "task.json: image must be a string, got 3"),
        ('{"env": ["A=1"]}', "task.json: env must be an object of strings"),
        ('{"env": {"N": 5}}', "task.json: env must be an object of strings"),
        (
            '{"requirements": {"memory_gb": "2G"}}',
            "requirements.memory_gb must be a number above 0",
        ),
        ('{"requirements": {"memory_gb": -1}}', "at most 4096, got -1"),
        ('{"requirements": {"memory_gb": 5000}}', "requirements.memory_gb must be a number"),
        ('{"requirements": {"cpu": true}}', "requirements.cpu must be a number above 0"),
        ('{"requirements": {"cpu": NaN}}', "requirements.cpu must be a number above 0"),
        ('{"cpu_cores": 0}', "task.json: cpu_cores must be a number above 0, at most 1024, got 0"),
        ('{"gpus": 1.5}', "task.json: gpus must be a whole number from 0 to 64, got 1.5"),
        ('{"timeout": 0}', "task.json: timeout must be a whole number from 1 to 10000000"),
        (
            '{"timeout": "60"}',
            'task.json: timeout must be a whole number from 1 to 10000000, got "60"',
        ),
        (
            '{"cpu": 1, "requirements": {"cpu_cores": 1}}',
            "gives both requirements.cpu_cores and cpu",
        ),
        (
            '{"timeout": 5, "timeout_seconds": 5}',
            "gives both timeout and timeout_seconds: keep one",
        ),
        # The file's own bounds passed, the hub's ranges still apply, with their own messages.
        ('{"timeout": 100000}', "timeout must be between 1 and 86400, got 100000"),
        ('{"requirements": {"memory_gb": 0.001}}', "memory must be between 6 MiB and 4 TiB"),
        ('{"image": "Not An Image"}', "image 'Not An Image' is not a valid image reference"),
        ('{"env": {"1A": "x"}}', "environment variable name '1A' is not valid"),
    ],
)
def test_a_malformed_task_json_is_refused(content: str, message: str) -> None:
    files = {"main.py": "", "lib/util.py": "", "task.json": content}
    with pytest.raises(InvalidInput) as refused:
        submitted(files)
    assert message in refused.value.message


def test_a_task_json_that_is_not_utf8_or_too_large_is_refused() -> None:
    with pytest.raises(InvalidInput, match=r"task\.json is not UTF-8 text"):
        submitted({"main.py": "", "task.json": b"{\xff}"})
    big = json.dumps({"description": "x" * (64 << 10)})
    with pytest.raises(InvalidInput, match=r"task\.json in the bundle is larger than 64 KiB"):
        submitted({"main.py": "", "task.json": big})


def test_only_the_top_level_task_json_counts() -> None:
    spec = submitted({"main.py": "", "lib/task.json": "not JSON"})
    assert spec.command == ["python", "/work/main.py"]


def test_the_quote_holds_what_the_pool_will_hold() -> None:
    cap, spec = quoted(with_task_json({"requirements": {"memory_gb": 4}, "timeout": 600}))
    card = RateCard.from_settings(SETTINGS)
    assert cap == card.price_cap(spec.request, spec.timeout_seconds)
    assert quoted(with_task_json({"memory_gb": 4}))[0] > quoted({"main.py": ""})[0]


def submit_body(*argv: str) -> dict[str, Any]:
    """What ``submit`` asks for: its bundle's path and its command (the JSON body but its
    data, which ``submit`` uploads first)."""
    args = build_hivemind_parser().parse_args(["submit", *argv])
    bundle, command = poolcli.bundle_and_command(args)
    if bundle:
        plan_data(bundle, [], [])  # checks the path, as submit does first
    return {"bundle": bundle, "command": command} if bundle else {"command": command}


def test_submit_takes_a_bundle_path_as_its_only_argument(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("job.zip").write_bytes(zip_of({"main.py": "print(1)\n"}))
    Path("job").mkdir()
    Path("job/run.py").write_text("print(2)\n")
    Path("notes.txt").write_text("")
    assert submit_body("--wait", "job.zip") == {"bundle": "job.zip", "command": []}
    assert submit_body("--memory", "1G", "job") == submit_body("--memory", "1G", "--bundle", "job")
    # Anything else stays a command: after --, more than one argument, or not a bundle.
    assert submit_body("--", "job.zip") == {"command": ["job.zip"]}
    assert submit_body("job.zip", "--flag") == {"command": ["job.zip", "--flag"]}
    assert submit_body("notes.txt") == {"command": ["notes.txt"]}
    with pytest.raises(NotFound, match=r"bundle 'missing\.zip' does not exist"):
        submit_body("missing.zip")  # a typo, not a command
    with_bundle = submit_body("--bundle", "job", "job.zip")
    assert with_bundle["command"] == ["job.zip"] and "bundle" in with_bundle
