"""``fedsecure bench he``: the CKKS pipeline on one vector — client encryption, bytes on
the wire, server accumulation per client (in a fresh process, for its peak memory),
key-holder decryption, the plaintext baseline and the error — with NVFlare's default
TenSEAL setting measured on the same vector as a reference line."""

from __future__ import annotations

import math
import multiprocessing
import resource
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from fedsecure.crypto import ckks
from fedsecure.crypto.ckks import CkksParams
from fedsecure.crypto.ckks_encryptor import Encryptor
from fedsecure.crypto.packing import TensorLayout, encoding_for
from fedsecure.types import UpdateManifest

GROUP = "attn.bench"


def _server_child(objects_dir: str, public: bytes, params: CkksParams,
                  manifests: list[UpdateManifest]) -> dict[str, float]:
    """The server's side in a fresh process: add every contribution chunk by chunk, as
    the upload path does, then serialise the sums. Reports time and peak memory."""
    from server.secagg.accumulator import HomomorphicAccumulator
    from server.rounds.objects import ObjectStore

    objects = ObjectStore(Path(objects_dir))
    acc = HomomorphicAccumulator(public_context=public, params=params, objects=objects)
    base_mb = _reset_peak_rss()
    spent = 0.0
    for k, manifest in enumerate(manifests):
        session = acc.begin(upload_id=f"u{k}", run_id="bench", round_=1, attempt=1, manifest=manifest)
        for i, digest in enumerate(manifest.chunk_sha256):
            data = objects.get(digest)  # stands in for the network; not timed
            t0 = time.perf_counter()
            acc.add_chunk(session, i, data, digest)
            spent += time.perf_counter() - t0
        acc.complete(session)
    t0 = time.perf_counter()
    sums = acc.sum_chunks(run_id="bench", round_=1, attempt=1, group=GROUP,
                          contributions=[(f"u{k}", m) for k, m in enumerate(manifests)])
    serialise_s = time.perf_counter() - t0
    peak_mb = _status_mb("VmHWM")
    out_dir = Path(objects_dir) / "sums"
    out_dir.mkdir()
    for i, s in enumerate(sums):
        (out_dir / f"{i}").write_bytes(s)
    return {"add_s": spent, "serialise_s": serialise_s, "base_mb": base_mb, "peak_mb": peak_mb}


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak_rss() -> float:
    """Reset the peak-RSS mark (Linux clear_refs), so imports do not hide the growth."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    return _status_mb("VmRSS")


def _measure(params: CkksParams, x: np.ndarray, weights: np.ndarray, *, workers: int) -> dict[str, object]:
    from server.rounds.objects import ObjectStore

    secret = ckks.create_secret_context(params)
    public = ckks.public_context_bytes(secret)
    layout = TensorLayout.of({"w": x[0]})
    enc_times, sizes, manifests = [], [], []
    with tempfile.TemporaryDirectory() as tmp, Encryptor(public_context=public, params=params,
                                                        workers=workers) as enc:
        encoding = str(encoding_for(enc.context_id, {GROUP: layout}))
        objects = ObjectStore(Path(tmp))
        enc.encrypt(x[0][: params.slots * 128], weight=1.0)  # start the worker processes
        for k in range(len(x)):
            t0 = time.perf_counter()
            chunks = enc.encrypt(x[k], weight=float(weights[k]))
            enc_times.append(time.perf_counter() - t0)
            sizes.append(sum(map(len, chunks)))
            digests = tuple(objects.put(c) for c in chunks)  # the server's object store
            manifests.append(UpdateManifest(group="attn", weight=float(weights[k]), encoding=encoding,
                                            chunk_sha256=digests, total_bytes=sizes[-1]))
        with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
            server = pool.submit(_server_child, tmp, public, params, manifests).result()
        sums = [(Path(tmp) / "sums" / f"{i}").read_bytes() for i in range(len(list((Path(tmp) / "sums").iterdir())))]
        t0 = time.perf_counter()
        total = ckks.decrypt_all(secret, params, sums, x.shape[1])
        decrypt_s = time.perf_counter() - t0
    expected = (weights[:, None] * x).sum(axis=0)
    return {"client_encrypt_s": round(statistics.median(enc_times), 4),
            "bytes_per_param": round(statistics.median(sizes) / x.shape[1], 3),
            "server_aggregate_s_per_client": round(server["add_s"] / len(x), 4),
            "server_serialise_sum_s": round(server["serialise_s"], 4),
            "server_peak_rss_mb": round(server["peak_mb"], 1),
            "server_rss_growth_mb": round(server["peak_mb"] - server["base_mb"], 1),
            "keyholder_decrypt_s": round(decrypt_s, 4),
            "max_abs_error": float(np.max(np.abs(total - expected))),
            "params": {"poly_modulus_degree": params.poly_modulus_degree,
                       "coeff_mod_bit_sizes": list(params.coeff_mod_bit_sizes), "scale_bits": params.scale_bits,
                       "asymmetric": True, "encrypt_workers": workers}}


def bench_he(*, n_params: int, clients: int, repeats: int = 3, reference_clients: int = 2,
             seed: int = 0) -> dict[str, object]:
    """Our parameters on ``clients`` contributions of ``n_params`` values, and the
    NVFlare-default reference line on the same vectors (fewer clients: it is per client)."""
    if n_params < 1 or clients < 2 or repeats < 1:
        raise ValueError("need n_params >= 1, clients >= 2, repeats >= 1")
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1.0, 1.0, (clients, n_params))
    counts = rng.integers(100, 1000, clients).astype(np.float64)
    weights = counts / counts.sum()  # sample-count weights summing to 1 (the CKKS bound)
    plain = []
    for _ in range(max(5, repeats)):
        t0 = time.perf_counter()
        (weights[:, None] * x).sum(axis=0)
        plain.append(time.perf_counter() - t0)
    runs = [_measure(ckks.DEFAULT_PARAMS, x, weights, workers=2) for _ in range(repeats)]
    out: dict[str, object] = {"params": n_params, "clients": clients, "repeats": repeats}
    for key in ("client_encrypt_s", "bytes_per_param", "server_aggregate_s_per_client", "server_serialise_sum_s",
                "server_peak_rss_mb", "server_rss_growth_mb", "keyholder_decrypt_s"):
        out[key] = statistics.median(r[key] for r in runs)  # type: ignore[misc]
    out["max_abs_error"] = max(r["max_abs_error"] for r in runs)  # type: ignore[type-var]
    out["plaintext_aggregate_s"] = round(statistics.median(plain), 6)
    out["ckks"] = runs[0]["params"]
    ref_k = min(clients, reference_clients)
    ref_w = weights[:ref_k] / weights[:ref_k].sum()
    ref = _measure(ckks.NVFLARE_DEFAULT_PARAMS, x[:ref_k], ref_w, workers=2)
    ref["clients"] = ref_k
    out["reference"] = {"name": "NVFlare default TenSEAL setting", **ref}
    out["bytes_ratio_vs_reference"] = round(float(out["bytes_per_param"]) / float(ref["bytes_per_param"]), 3)  # type: ignore[arg-type]
    if not math.isfinite(float(out["max_abs_error"])):  # type: ignore[arg-type]
        raise RuntimeError("non-finite error: the CKKS parameters are broken")
    return out
