"""``fedsecure provision``: create the consortium CA and one sealed kit per participant."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedsecure.task import SealedTask, Task
from fedsecure.crypto import ckks, pki
from fedsecure.kit import write_kit
from fedsecure.models.backbone import backbone_digest, shape_dict, shape_of
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
    keyholder_public_context: bytes,
    server_address: str = "127.0.0.1:50051",
    keyholder_address: str = "127.0.0.1:50052",
    hosts: Sequence[str] = ("localhost", "127.0.0.1"),
    validity_days: int = pki.DEFAULT_VALIDITY_DAYS,
    ckks_params: ckks.CkksParams = ckks.DEFAULT_PARAMS,
    backbone: Path | Sequence[Path] | None = None,
    task: Task,
) -> Provisioned:
    """Create ``out/{ca,server,keyholder,admin,clients/<name>}`` for a federation on
    ``task`` (every kit seals its name, answer set and words); never overwrites.

    The CA key stays in ``out/ca`` (mode 0600): keep it offline once kits are handed out.
    The CKKS key pair is *not* made here: the key holder makes it on its own machine
    (``fedsecure keyholder-keygen``) and hands over only its public context, which every
    kit gets, sealed by the CA like the rest of the kit. A context that carries a secret
    key is refused, so the provisioner never holds one.
    """
    names = [pki.check_name(c) for c in clients]
    if not names:
        raise ValueError("provision needs at least one client name")
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate client names in {names}")
    reserved = {SERVER_NAME, KEYHOLDER_NAME, ADMIN_NAME} & set(names)
    if reserved:
        raise ValueError(f"client names {sorted(reserved)} are reserved")
    check_public_context(keyholder_public_context, ckks_params)
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

    public = {ckks.PUBLIC_CONTEXT_FILE: keyholder_public_context}
    settings: dict[str, object] = {"ckks": ckks.params_to_settings(ckks_params),
                                   "task": SealedTask.of(task).to_settings()}
    folders = [] if backbone is None else [backbone] if isinstance(backbone, Path) else list(backbone)
    if folders:
        # One sealed backbone per architecture: clients of different block shapes each train
        # on one of these, and only clients on the same one are ever averaged together.
        sealed = [{"sha256": backbone_digest(f), "shape": shape_dict(shape_of(f))} for f in folders]
        if len({e["sha256"] for e in sealed}) != len(sealed):
            raise ValueError("the same backbone is given twice")
        settings["backbones"] = sealed

    def make(path: Path, name: str, role: Role) -> Path:
        server_side = role in (Role.SERVER, Role.KEYHOLDER)
        key, cert = pki.issue_certificate(
            ca_key=ca_key, ca_cert=ca_cert, name=name, role=role,
            hosts=tuple(hosts) if server_side else (), validity_days=validity_days,
        )
        return write_kit(path=path, role=role, name=name, ca_key=ca_key, ca_cert=ca_cert, key=key, cert=cert,
                         addresses=addresses, settings=settings, extra_files=public)

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


def check_public_context(data: bytes, params: ckks.CkksParams) -> None:
    """Refuse a CKKS context that holds a secret key or does not fit ``params`` (checked by
    encrypting a probe under it and validating the ciphertext as every server will)."""
    ctx = ckks.load_public_context(data, params)
    probe = ckks.encrypt_ciphertexts(ctx, np.zeros(params.slots), params.slots)[0]
    ckks.load_ciphertext(ctx, probe, params)
    bits = ctx.data.seal_context().key_context_data().total_coeff_modulus_bit_count()
    if bits != sum(params.coeff_mod_bit_sizes):
        raise ckks.CkksError(f"the public context has a {bits}-bit modulus; the federation's CKKS parameters "
                             f"need {sum(params.coeff_mod_bit_sizes)} bits")
