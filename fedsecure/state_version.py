"""A version stamp on every party's state folder (server, key holder, client), so that a
fedsecure of one version never misreads state written by another: state of another
version is refused with a message saying what to do, never silently reinterpreted.

Version history:
1. (unstamped) up to the security review;
2. submission ids, ledger-entry hashes and the key holder's used-contribution index are
   over what was signed, never over signature bytes; the key holder keeps its own CKKS
   key pair and revocation list.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from fedsecure.errors import StateVersionError
from fedsecure.types import Role

STATE_VERSION = 2
STAMP = "fedsecure-state.json"


def claim_state_dir(path: Path, *, role: Role) -> None:
    """Create ``path`` stamped with this version, or check the stamp it carries.

    An existing folder with content but no stamp was written before stamping began
    (version 1) and is refused, as is a stamp of another version or another role."""
    path.mkdir(parents=True, exist_ok=True)
    stamp = path / STAMP
    if not stamp.exists():
        if any(p.name != STAMP for p in path.iterdir()):
            raise StateVersionError(f"{path} holds fedsecure state written before version {STATE_VERSION} "
                                    f"(no {STAMP}); use a new state folder, or finish with the fedsecure that "
                                    "wrote it")
        tmp = path / (STAMP + ".tmp")
        tmp.write_text(json.dumps({"version": STATE_VERSION, "role": role.value}) + "\n", encoding="utf-8")
        os.replace(tmp, stamp)
        return
    try:
        doc = json.loads(stamp.read_text(encoding="utf-8"))
        version, owner = int(doc["version"]), str(doc["role"])
    except (ValueError, KeyError, TypeError) as exc:
        raise StateVersionError(f"{stamp} is unreadable: {exc}") from exc
    if version != STATE_VERSION:
        raise StateVersionError(f"{path} holds state of version {version}; this fedsecure reads version "
                                f"{STATE_VERSION}. Use a new state folder, or the fedsecure that wrote it")
    if owner != role.value:
        raise StateVersionError(f"{path} is a {owner}'s state folder, not a {role.value}'s")
