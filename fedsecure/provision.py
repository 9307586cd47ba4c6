"""``fedsecure provision``: create the consortium CA and one sealed kit per participant."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fedsecure.crypto import ckks, pki
from fedsecure.kit import write_kit
from fedsecure.types import Role

SERVER_NAME = "server"
KEYHOLDER_NAME = "keyholder"
ADMIN_NAME = "admin"


@dataclass(frozen=True)
class Provisioned:
    """Where provisioning wrote each kit, and the CA fingerprint to pin."""

    root: Path
    ca_fingerprint: str
    server: Path
    keyholder: Path
    admin: Path
    clients: dict[str, Path]


def provision(
    *,
    out: Path,
    clients: Sequence[str],
    server_address: str = "127.0.0.1:50051",
    keyholder_address: str = "127.0.0.1:50052",
    hosts: Sequence[str] = ("localhost", "127.0.0.1"),
    validity_days: int = pki.DEFAULT_VALIDITY_DAYS,
    ckks_params: ckks.CkksParams = ckks.DEFAULT_PARAMS,
) -> Provisioned:
    """Create ``out/{ca,server,keyholder,admin,clients/<name>}``; never overwrites.

    The CA key stays in ``out/ca`` (mode 0600): keep it offline once kits are handed out.
    The CKKS key pair is made here too: the secret context goes only into the key
    holder's kit (0600) and is not kept anywhere else; every other kit gets the public
    context, sealed by the CA like the rest of the kit.
    """
    names = [pki.check_name(c) for c in clients]
    if not names:
        raise ValueError("provision needs at least one client name")
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate client names in {names}")
    reserved = {SERVER_NAME, KEYHOLDER_NAME, ADMIN_NAME} & set(names)
    if reserved:
        raise ValueError(f"client names {sorted(reserved)} are reserved")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; provisioning never overwrites kits")
    out.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = pki.create_ca(validity_days=validity_days)
    ca_dir = out / "ca"
    ca_dir.mkdir(mode=0o700)
    (ca_dir / "ca.pem").write_bytes(pki.cert_pem(ca_cert))
    fd = os.open(ca_dir / "ca_key.pem", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pki.key_pem(ca_key))
    addresses = {
        "server_address": server_address,
        "server_name": SERVER_NAME,
        "keyholder_address": keyholder_address,
        "keyholder_name": KEYHOLDER_NAME,
    }

    secret_ctx = ckks.create_secret_context(ckks_params)
    public = {ckks.PUBLIC_CONTEXT_FILE: ckks.public_context_bytes(secret_ctx)}
    settings = {"ckks": ckks.params_to_settings(ckks_params)}

    def make(path: Path, name: str, role: Role) -> Path:
        server_side = role in (Role.SERVER, Role.KEYHOLDER)
        key, cert = pki.issue_certificate(
            ca_key=ca_key, ca_cert=ca_cert, name=name, role=role,
            hosts=tuple(hosts) if server_side else (), validity_days=validity_days,
        )
        private = {ckks.SECRET_CONTEXT_FILE: ckks.secret_context_bytes(secret_ctx)} if role is Role.KEYHOLDER else {}
        return write_kit(path=path, role=role, name=name, ca_key=ca_key, ca_cert=ca_cert, key=key, cert=cert,
                         addresses=addresses, settings=settings, extra_files=public, private_files=private)

    client_dir = out / "clients"
    client_dir.mkdir()
    return Provisioned(
        root=out,
        ca_fingerprint=pki.fingerprint(ca_cert),
        server=make(out / "server", SERVER_NAME, Role.SERVER),
        keyholder=make(out / "keyholder", KEYHOLDER_NAME, Role.KEYHOLDER),
        admin=make(out / "admin", ADMIN_NAME, Role.ADMIN),
        clients={n: make(client_dir / n, n, Role.CLIENT) for n in names},
    )
