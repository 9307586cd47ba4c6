"""The committed stubs are exactly what proto/ generates (CI fails on drift)."""

from __future__ import annotations

from pathlib import Path

from fedsecure.proto.generate import PACKAGE_DIR, generate, proto_files


def test_committed_stubs_match_generated(tmp_path: Path) -> None:
    written = generate(tmp_path)
    assert len(written) == 3 * len(proto_files())  # _pb2.py, _pb2.pyi, _pb2_grpc.py each
    for fresh in written:
        committed = PACKAGE_DIR / fresh.name
        assert committed.exists(), f"{committed.name} is not committed: run `make proto`"
        assert committed.read_bytes() == fresh.read_bytes(), f"{committed.name} drifted: run `make proto`"
    stale = {p.name for p in PACKAGE_DIR.glob("*_pb2*.py*")} - {p.name for p in written}
    assert not stale, f"stubs without a .proto: {sorted(stale)}"


def test_stubs_import_from_the_package() -> None:
    from fedsecure.proto.v1 import federation_pb2_grpc

    source = Path(federation_pb2_grpc.__file__).read_text()
    assert "from fedsecure.proto.v1 import" in source
    assert "from fedsecure.v1 import" not in source
