"""Versioned state: kits, state folders and the server's database carry a version, and
every party refuses another version with a message saying what to do."""

from __future__ import annotations

import json
import shutil
import sqlite3
import tomllib
from pathlib import Path

import pytest
import tomli_w

from apps.cli import main as cli
from fedsecure.crypto import pki, signing
from fedsecure.errors import KitError, StateVersionError
from fedsecure.kit import DOMAIN_KIT, KIT_SIG, KIT_TOML, load_kit
from fedsecure.provision import Provisioned
from fedsecure.state_version import STAMP, STATE_VERSION, claim_state_dir
from fedsecure.types import Role
from server.rounds.database import SCHEMA_VERSION
from server.rounds.store import Store


def test_a_kit_of_another_format_is_refused_even_when_validly_sealed(kits: Provisioned, tmp_path: Path) -> None:
    kit = tmp_path / "server"
    shutil.copytree(kits.server, kit)
    doc = tomllib.loads((kit / KIT_TOML).read_text())
    doc["kit"]["format"] = 1
    toml_bytes = tomli_w.dumps(doc).encode()
    (kit / KIT_TOML).write_bytes(toml_bytes)
    ca_key = pki.load_private_key((kits.root / "ca" / "ca_key.pem").read_bytes())
    (kit / KIT_SIG).write_bytes(signing.sign(ca_key, signing.canonical(DOMAIN_KIT, [toml_bytes])))
    with pytest.raises(KitError, match="kit format 1 is not this fedsecure's format 2; re-provision"):
        load_kit(kit)


def test_state_folders_are_stamped_and_other_versions_refused(tmp_path: Path) -> None:
    fresh = tmp_path / "fresh"
    claim_state_dir(fresh, role=Role.CLIENT)
    assert json.loads((fresh / STAMP).read_text()) == {"version": STATE_VERSION, "role": "client"}
    (fresh / "ledger.jsonl").write_text("")
    claim_state_dir(fresh, role=Role.CLIENT)  # its own stamp: fine
    with pytest.raises(StateVersionError, match="a client's state folder, not a keyholder's"):
        claim_state_dir(fresh, role=Role.KEYHOLDER)
    (fresh / STAMP).write_text(json.dumps({"version": STATE_VERSION + 1, "role": "client"}))
    with pytest.raises(StateVersionError, match=f"version {STATE_VERSION + 1}"):
        claim_state_dir(fresh, role=Role.CLIENT)
    old = tmp_path / "old"
    old.mkdir()
    (old / "ledger.jsonl").write_text("{}\n")  # written before stamping began
    with pytest.raises(StateVersionError, match="written before version"):
        claim_state_dir(old, role=Role.CLIENT)


def test_server_database_of_another_schema_version_is_refused(kits: Provisioned, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    store = Store(tmp_path / "ok" / "server.sqlite")
    assert store.db.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    store.close()
    Store(tmp_path / "ok" / "server.sqlite").close()  # reopening its own version is fine
    state = tmp_path / "state"
    claim_state_dir(state, role=Role.SERVER)
    con = sqlite3.connect(state / "server.sqlite")
    con.execute("CREATE TABLE runs(run_id TEXT)")
    con.execute("PRAGMA user_version=1")
    con.commit()
    con.close()
    with pytest.raises(StateVersionError, match=f"schema version 1; this fedsecure uses version {SCHEMA_VERSION}"):
        Store(state / "server.sqlite")
    assert cli(["server", "--kit", str(kits.server), "--state", str(state), "--address", "127.0.0.1:0"]) == 2
    assert "state refused" in capsys.readouterr().err
