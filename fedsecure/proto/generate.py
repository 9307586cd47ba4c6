"""Regenerate the committed protobuf stubs from ``proto/fedsecure/v1/*.proto``.

The ``.proto`` files are the wire contract's source of truth. protoc names the
Python modules after the proto path (``fedsecure.v1``); the stubs live under
``fedsecure.proto.v1``, so their cross-module imports are rewritten. The output is
deterministic for a pinned ``grpcio-tools``, which lets a test fail on drift.

Usage: ``python -m fedsecure.proto.generate [OUT_DIR]`` (default: the package dir).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PROTO_ROOT = REPO_ROOT / "proto"
PACKAGE_DIR = Path(__file__).resolve().parent / "v1"
_PROTO_IMPORT = "from fedsecure.v1 import "
_PACKAGE_IMPORT = "from fedsecure.proto.v1 import "


def proto_files() -> list[Path]:
    """The contract's ``.proto`` files, sorted so generation order is stable."""
    return sorted((PROTO_ROOT / "fedsecure" / "v1").glob("*.proto"))


def generate(out_dir: Path) -> list[Path]:
    """Write ``*_pb2.py``, ``*_pb2.pyi`` and ``*_pb2_grpc.py`` into ``out_dir``."""
    from grpc_tools import protoc  # test/dev dependency only

    files = proto_files()
    if not files:
        raise FileNotFoundError(f"no .proto files under {PROTO_ROOT}")
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as raw:
        args = [
            "protoc",
            f"-I{PROTO_ROOT}",
            f"-I{Path(protoc.__file__).parent / '_proto'}",
            f"--python_out={raw}",
            f"--pyi_out={raw}",
            f"--grpc_python_out={raw}",
            *[str(f.relative_to(PROTO_ROOT)) for f in files],
        ]
        if protoc.main(args) != 0:
            raise RuntimeError("protoc failed; see its message above")
        written = []
        for src in sorted((Path(raw) / "fedsecure" / "v1").iterdir()):
            text = src.read_text().replace(_PROTO_IMPORT, _PACKAGE_IMPORT)
            dst = out_dir / src.name
            dst.write_text(text)
            written.append(dst)
    return written


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: regenerate into the package (or a given folder)."""
    argv = sys.argv[1:] if argv is None else argv
    out = Path(argv[0]) if argv else PACKAGE_DIR
    if out == PACKAGE_DIR:
        for old in PACKAGE_DIR.glob("*_pb2*.py*"):
            old.unlink()
    for path in generate(out):
        print(path)
    init = out / "__init__.py"
    if out == PACKAGE_DIR and not init.exists():
        init.write_text('"""Generated stubs; edit proto/fedsecure/v1/*.proto instead."""\n')
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
