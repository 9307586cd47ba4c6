"""The key holder's own CKKS key pair (docs/design.md §2: only the key holder ever holds the
secret key). It is generated here, on the key holder's machine, before provisioning;
only the *public* context leaves, to be sealed into every kit by the CA. Nobody who
provisions, operates the server or joins as a client ever holds the secret.

    fedsecure keyholder-keygen --keys DIR      # DIR/ckks_secret.ctx (0600), DIR/ckks_public.ctx
    fedsecure provision --keyholder-context DIR/ckks_public.ctx ...
    fedsecure keyholder --kit kits/keyholder --keys DIR ...
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import tenseal as ts

from fedsecure.crypto import ckks
from fedsecure.crypto.ckks import CkksParams
from fedsecure.errors import CkksError, KitError
from fedsecure.kit import Kit

SECRET_FILE = ckks.SECRET_CONTEXT_FILE
PUBLIC_FILE = ckks.PUBLIC_CONTEXT_FILE


def generate_keys(*, keys_dir: Path, params: CkksParams = ckks.DEFAULT_PARAMS) -> Path:
    """Create a fresh key pair in ``keys_dir`` (made 0700; the secret 0600; never
    overwrites). Returns the public context's path, the file to hand to provisioning."""
    keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    secret_path, public_path = keys_dir / SECRET_FILE, keys_dir / PUBLIC_FILE
    if secret_path.exists() or public_path.exists():
        raise FileExistsError(f"{keys_dir} already holds a key pair; a key holder never overwrites its keys")
    ctx = ckks.create_secret_context(params)
    fd = os.open(secret_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(ckks.secret_context_bytes(ctx))
        fh.flush()
        os.fsync(fh.fileno())
    public_path.write_bytes(ckks.public_context_bytes(ctx))
    return public_path


def load_secret(*, keys_dir: Path, kit: Kit) -> ts.Context:
    """The secret context, checked to belong to the public context sealed in ``kit``
    (otherwise the clients would encrypt for another key) and to be private to its owner."""
    path = keys_dir / SECRET_FILE
    if not path.is_file():
        raise KitError(f"{path} not found: run `fedsecure keyholder-keygen --keys {keys_dir}` before provisioning")
    if stat.S_IMODE(path.stat().st_mode) & 0o077:
        raise KitError(f"{path} is readable by others; the CKKS secret key must be 0600")
    params = ckks.kit_params(kit)
    secret = ckks.load_secret_context(path.read_bytes(), params)
    if ckks.public_context_bytes(secret) != ckks.kit_public_context(kit):
        raise CkksError(f"the secret key in {keys_dir} does not match the public context sealed in the kits")
    return secret
