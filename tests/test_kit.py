"""Provisioning and kit verification: a tampered or unsafe kit is refused at start."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from apps.cli import main as cli_main
from fedsecure.crypto import pki
from fedsecure.errors import CertificateError, KitError
from fedsecure.kit import load_kit
from tasks.easyvqa import TASK as EASYVQA
from fedsecure.provision import Provisioned, provision
from fedsecure.types import Role


def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "kit"
    shutil.copytree(src, dst)
    return dst


def test_provision_layout_roles_and_modes(kits: Provisioned) -> None:
    root = kits.root
    for path, role, name in [(kits.server, Role.SERVER, "server"), (kits.keyholder, Role.KEYHOLDER, "keyholder"),
                             (kits.admin, Role.ADMIN, "admin"), (kits.clients["a"], Role.CLIENT, "a")]:
        kit = load_kit(path, expected_role=role, ca_fingerprint=kits.ca_fingerprint)
        assert (kit.role, kit.name, kit.identity.role) == (role, name, role)
        assert (path / "key.pem").stat().st_mode & 0o777 == 0o600
    assert (root / "ca" / "ca_key.pem").stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in (root / "clients").iterdir()) == ["a", "b", "c", "d"]


def _public(keys: Path) -> bytes:
    return (keys / "ckks_public.ctx").read_bytes()


def test_provision_never_overwrites(kits: Provisioned, keyholder_keys: Path) -> None:
    with pytest.raises(FileExistsError):
        provision(out=kits.root, clients=["x"], keyholder_public_context=_public(keyholder_keys), task=EASYVQA)


@pytest.mark.parametrize("clients, message", [([], "at least one"), (["a", "a"], "duplicate"),
                                               (["server"], "reserved"), (["Bad Name"], "invalid")])
def test_provision_rejects_bad_client_lists(tmp_path: Path, keyholder_keys: Path, clients: list[str],
                                            message: str) -> None:
    with pytest.raises(ValueError, match=message):
        provision(out=tmp_path / "k", clients=clients, keyholder_public_context=_public(keyholder_keys), task=EASYVQA)


@example("a\n")  # found by hypothesis: "$" let a trailing newline through
@given(st.text(max_size=70))
def test_check_name_accepts_only_safe_names(name: str) -> None:
    head, tail = "abcdefghijklmnopqrstuvwxyz0123456789", "abcdefghijklmnopqrstuvwxyz0123456789_-"
    ok = 1 <= len(name) <= 63 and name[0] in head and all(c in tail for c in name)
    if ok:
        assert pki.check_name(name) == name
    else:
        with pytest.raises(ValueError):
            pki.check_name(name)


def test_tampered_kit_toml_is_refused(kits: Provisioned, tmp_path: Path) -> None:
    kit = _copy(kits.clients["a"], tmp_path)
    toml = kit / "kit.toml"
    toml.write_text(toml.read_text().replace("127.0.0.1:50051", "203.0.113.9:50051"))
    with pytest.raises(KitError, match="not signed by the kit's CA"):
        load_kit(kit)


def test_swapped_certificate_is_refused(kits: Provisioned, tmp_path: Path) -> None:
    kit = _copy(kits.clients["a"], tmp_path)
    shutil.copy(kits.clients["b"] / "cert.pem", kit / "cert.pem")
    with pytest.raises(KitError, match="cert.pem does not match"):
        load_kit(kit)


def test_missing_file_and_wrong_role_are_refused(kits: Provisioned, tmp_path: Path) -> None:
    kit = _copy(kits.clients["a"], tmp_path)
    (kit / "kit.sig").unlink()
    with pytest.raises(KitError, match="missing kit.sig"):
        load_kit(kit)
    with pytest.raises(KitError, match="expected a server kit"):
        load_kit(kits.clients["a"], expected_role=Role.SERVER)
    with pytest.raises(KitError, match="does not exist"):
        load_kit(tmp_path / "nope")


def test_world_readable_key_is_refused(kits: Provisioned, tmp_path: Path) -> None:
    kit = _copy(kits.clients["a"], tmp_path)
    os.chmod(kit / "key.pem", 0o644)
    with pytest.raises(KitError, match="chmod 600"):
        load_kit(kit)


def test_kit_resealed_by_another_ca_fails_the_pin(kits: Provisioned, other_kits: Provisioned) -> None:
    load_kit(other_kits.clients["a"])  # self-consistent on its own
    with pytest.raises(KitError, match="fingerprint"):
        load_kit(other_kits.clients["a"], ca_fingerprint=kits.ca_fingerprint)


def test_certificate_from_another_ca_does_not_verify(kits: Provisioned, other_kits: Provisioned) -> None:
    foreign = load_kit(other_kits.clients["a"]).cert
    with pytest.raises(CertificateError, match="not issued by the consortium CA"):
        pki.verify_issued_by(foreign, load_kit(kits.server).ca_cert)


def test_cli_refuses_a_tampered_server_kit_with_a_clear_message(kits: Provisioned, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    kit = _copy(kits.server, tmp_path)
    (kit / "ca.pem").write_bytes((kits.clients["a"] / "cert.pem").read_bytes())
    assert cli_main(["server", "--kit", str(kit), "--address", "127.0.0.1:0"]) == 2
    assert "kit refused" in capsys.readouterr().err
