"""Generate the protobuf/gRPC Python code (with .pyi stubs) from protos/*.proto.

    python scripts/protos.py          # regenerate into protos/
    python scripts/protos.py --check  # exit 1 if protos/ is stale

Files are generated with the virtual include path ``hivemind_cluster/protos`` so
the generated imports are absolute (``from hivemind_cluster.protos import ...``).
"""

from __future__ import annotations

import filecmp
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
VIRTUAL = "hivemind_cluster/protos"
SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def generate(out_dir: Path) -> list[Path]:
    sources = sorted(PROTOS.glob("*.proto"))
    command = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{VIRTUAL}={PROTOS}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *[f"{VIRTUAL}/{source.name}" for source in sources],
    ]
    # The mypy plugins are console scripts next to this interpreter.
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"protoc failed:\n{done.stdout}{done.stderr}")
    return sorted((out_dir / VIRTUAL).glob("*_pb2*"))


def main() -> int:
    check = "--check" in sys.argv[1:]
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        stale = [
            f.name
            for f in fresh
            if not (PROTOS / f.name).exists() or not filecmp.cmp(f, PROTOS / f.name, shallow=False)
        ]
        current = {p.name for p in PROTOS.iterdir() if p.name.endswith(SUFFIXES)}
        extra = sorted(current - {f.name for f in fresh})
        if check:
            if stale or extra:
                print(f"generated protobuf code is stale: {stale + extra}; run `make protos`")
                return 1
            return 0
        for name in extra:
            (PROTOS / name).unlink()
        for f in fresh:
            shutil.copyfile(f, PROTOS / f.name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
