"""The operator's backbones for ``fedsecure demo``: pretrained on public data, several at
once, and kept between runs in a cache whose entries are trusted only after their digest
is checked against the one recorded when they were made."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from fedsecure.child_processes import ChildProcesses


def cache_root() -> Path:
    """Where the demo keeps pretrained artefacts between runs (``FEDSECURE_CACHE``)."""
    return Path(os.environ.get("FEDSECURE_CACHE") or Path.home() / ".cache" / "fedsecure")


@dataclass(frozen=True)
class Pretraining:
    """One backbone the operator pretrains: where it goes, its log stem, the label printed,
    and the extra ``fedsecure backbone pretrain`` flags of its architecture."""

    folder: Path
    log_stem: Path
    label: str = ""
    extra: tuple[str, ...] = ()


def pretrain(jobs: list[Pretraining], steps: int) -> list[dict[str, object]]:
    """``fedsecure backbone pretrain`` as the operator runs it, once per job; returns each
    job's manifest. A backbone pretrained before with the same settings is reused — after
    its digest is checked against the one recorded when it was made (a changed file is
    pretrained anew). The others pretrain at the same time, the cores split between them:
    these small models use two threads poorly, so two processes of one thread each finish
    sooner than the two one after the other."""
    import hashlib

    from fedsecure import __version__
    from fedsecure.models.backbone import backbone_digest
    from server.backbone.pretrain import RECIPE

    started = time.monotonic()
    manifests: dict[int, dict[str, object]] = {}
    running: list[tuple[int, Path, subprocess.Popen[bytes]]] = []
    todo = []
    for i, job in enumerate(jobs):
        key = hashlib.sha256(json.dumps({"steps": steps, "extra": list(job.extra), "version": __version__,
                                         "recipe": RECIPE}).encode())
        entry = cache_root() / f"backbone-{key.hexdigest()[:16]}"
        if (entry / "manifest.json").is_file() and (entry / "backbone").is_dir():
            probe = json.loads((entry / "manifest.json").read_text())
            if backbone_digest(entry / "backbone") == probe.get("sha256"):
                shutil.copytree(entry / "backbone", job.folder)
                job.log_stem.with_suffix(".json").write_text(json.dumps(probe))
                print(f"[demo] reusing the backbone{job.label} pretrained earlier ({steps} steps, digest "
                      f"{str(probe['sha256'])[:12]}… verified) from {entry}", flush=True)
                manifests[i] = probe
                continue
        todo.append((i, entry))
    threads = max(1, (os.cpu_count() or 1) // max(1, len(todo)))
    # leaving the block (a failure, the demo's SIGTERM) leaves no pretraining running
    with ChildProcesses(handle_sigterm=False) as children:
        for i, entry in todo:
            job = jobs[i]
            print(f"[demo] operator pretrains a reward-model backbone{job.label} on public data ({steps} steps)",
                  flush=True)
            popen = children.start([sys.executable, "-m", "apps.cli", "backbone", "pretrain", "--out", str(job.folder),
                                    "--steps", str(steps), "--threads", str(threads), *job.extra],
                                   log=job.log_stem.with_suffix(".log"), stdout=job.log_stem.with_suffix(".json"),
                                   threads=threads)
            running.append((i, entry, popen))
        for i, entry, popen in running:
            job = jobs[i]
            if popen.wait(timeout=max(1.0, 1800 - (time.monotonic() - started))) != 0:
                raise subprocess.CalledProcessError(popen.returncode, popen.args)
            probe = json.loads(job.log_stem.with_suffix(".json").read_text())
            before, after = probe["before"], probe["after"]
            probes = ", ".join(f"{k.removeprefix('probe_')} {before[k]:.2f} -> {after[k]:.2f}"
                               for k in after if k.startswith("probe_"))
            print(f"[demo] backbone{job.label} probes on public evaluation images, before -> after: {probes}; masked "
                  f"tokens {before['masked_token']:.2f} -> {after['masked_token']:.2f} "
                  f"({time.monotonic() - started:.0f} s)", flush=True)
            _cache(job.folder, probe, entry)
            manifests[i] = probe
    return [manifests[i] for i in range(len(jobs))]


def _cache(folder: Path, probe: dict[str, object], entry: Path) -> None:
    """Keep a pretrained backbone for the next run; a failure here only costs that run the
    pretraining."""
    try:
        tmp = entry.with_name(entry.name + f".tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(folder, tmp / "backbone")
        (tmp / "manifest.json").write_text(json.dumps(probe))
        shutil.rmtree(entry, ignore_errors=True)
        os.replace(tmp, entry)
    except OSError as exc:
        print(f"[demo] could not cache the backbone in {entry}: {exc}", flush=True)
