"""The federation's pretrained backbone: pretraining moves what it should (measured on the
server's reward-evaluation part, never on what it trained on), the folder is identical
wherever it is loaded, its digest is sealed in the kits, and a client refuses any other."""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tasks.easyvqa.models import reward_config_on_backbone as easyvqa_on_backbone
from fedsecure.errors import KitError
from fedsecure.kit import load_kit
from fedsecure.models.backbone import MANIFEST, backbone_digest, verify_backbone
from fedsecure.models.reward import build_reward_model
from fedsecure.provision import provision
from tasks.easyvqa import TASK as EASYVQA
from server.backbone.pretrain import PretrainSettings, pretrain_backbone


@pytest.fixture(scope="module")
def backbone(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:  # type: ignore[type-arg]
    out = tmp_path_factory.mktemp("backbone") / "bb"
    return out, pretrain_backbone(PretrainSettings(out=out, steps=80), task=EASYVQA)


def test_pretraining_moves_the_measured_features(backbone) -> None:  # type: ignore[no-untyped-def]
    folder, manifest = backbone
    before, after = manifest["before"], manifest["after"]
    # Linear probes on frozen features of reward-evaluation images (never trained on).
    assert after["probe_color"] > before["probe_color"] + 0.1, manifest
    assert after["masked_token"] > before["masked_token"] + 0.2, manifest
    assert manifest["data"] == {"parts": "pretrain, router, public pool, seed set", "split_seed": 0,
                                "images": manifest["data"]["images"],
                                "questions": manifest["data"]["questions"], "client_data": False}
    assert manifest["sha256"] == backbone_digest(folder)
    doc = json.loads((folder / MANIFEST).read_text())
    assert doc["after"] == after and (folder / "image" / "model.safetensors").is_file()


_HASH = """
import hashlib, sys, torch
from pathlib import Path
from fedsecure.models.reward import build_reward_model
from tasks.easyvqa.models import reward_config_on_backbone
model, _ = build_reward_model(reward_config_on_backbone(sys.argv[2], Path(sys.argv[1])))
h = hashlib.sha256()
frozen = sorted((n, p) for n, p in model.named_parameters() if not p.requires_grad)  # backbone + FFA-LoRA A
for name, t in frozen:
    h.update(name.encode() + t.detach().contiguous().numpy().tobytes())
print(len(frozen), h.hexdigest())
"""


def test_a_reward_model_on_the_backbone_is_identical_in_two_processes(backbone) -> None:  # type: ignore[no-untyped-def]
    folder, _ = backbone
    # Everything frozen (the stacks and the shared FFA-LoRA A) is the same in two processes;
    # heads and local adapters are each client's own.
    digests = {subprocess.run([sys.executable, "-c", _HASH, str(folder), "image_text"], capture_output=True,
                              text=True, check=True, timeout=120).stdout.strip() for _ in range(2)}
    assert len(digests) == 1 and int(next(iter(digests)).split()[0]) > 50, digests
    model, _ = build_reward_model(easyvqa_on_backbone("image_text", folder))
    from transformers import ViTModel

    stack = ViTModel.from_pretrained(folder / "image")
    loaded = dict(stack.named_parameters())
    # The frozen base weights are the backbone's, not a random initialisation.
    mine = dict(model.image.named_parameters())  # type: ignore[union-attr]
    q = "layers.0.attention.q_proj.weight"
    assert torch.equal(mine["layers.0.attention.q_proj.base_layer.weight"], loaded[q])
    assert torch.equal(mine["embeddings.patch_embeddings.projection.weight"],
                       loaded["embeddings.patch_embeddings.projection.weight"])


def test_a_client_refuses_any_backbone_but_the_sealed_one(backbone, tmp_path: Path, keyholder_keys) -> None:  # type: ignore[no-untyped-def]
    from client_sdk.cli import model_config

    folder, manifest = backbone
    kits = provision(out=tmp_path / "kits", clients=["x"], backbone=folder,
                     keyholder_public_context=(keyholder_keys / "ckks_public.ctx").read_bytes(), task=EASYVQA)
    kit = load_kit(kits.clients["x"])
    assert [b["sha256"] for b in kit.settings["backbones"]] == [manifest["sha256"]]
    config = model_config(argparse.Namespace(kind="image", backbone=folder), kit)
    assert config.image_backbone == str(folder / "image") and config.hidden == 64
    with pytest.raises(KitError, match="pass --backbone"):
        model_config(argparse.Namespace(kind="image", backbone=None), kit)
    tampered = tmp_path / "tampered"
    shutil.copytree(folder, tampered)
    weights = tampered / "text" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(KitError, match="is not one the federation seals"):
        model_config(argparse.Namespace(kind="text", backbone=tampered), kit)
    with pytest.raises(KitError, match="is not one the federation seals"):
        verify_backbone(tampered, expected_sha256=manifest["sha256"])
    assert hashlib.sha256(b"").hexdigest() != manifest["sha256"]


def test_a_federation_seals_one_backbone_per_architecture(backbone, tmp_path: Path, keyholder_keys) -> None:  # type: ignore[no-untyped-def]
    from client_sdk.cli import model_config

    folder, _ = backbone
    deeper = tmp_path / "deeper"  # stands for a second architecture's backbone: another digest
    shutil.copytree(folder, deeper)
    doc = json.loads((deeper / "backbone.json").read_text())
    (deeper / "backbone.json").write_text(json.dumps({**doc, "seed": 1}))
    context = (keyholder_keys / "ckks_public.ctx").read_bytes()
    with pytest.raises(ValueError, match="twice"):
        provision(out=tmp_path / "twice", clients=["x"], backbone=[folder, folder], keyholder_public_context=context, task=EASYVQA)
    kit = load_kit(provision(out=tmp_path / "kits", clients=["x"], backbone=[folder, deeper],
                             keyholder_public_context=context, task=EASYVQA).clients["x"])
    assert len(kit.settings["backbones"]) == 2
    for f in (folder, deeper):
        assert model_config(argparse.Namespace(kind="text", backbone=f), kit).backbone_sha256 == backbone_digest(f)


def test_the_server_refuses_a_client_on_another_backbone(backbone, tmp_path: Path, keyholder_keys) -> None:  # type: ignore[no-untyped-def]
    import grpc

    from client_sdk import FederatedClient
    from fedsecure.types import Capabilities
    from server.app import start_server
    from tests.conftest import LoopThread

    folder, manifest = backbone
    kits = provision(out=tmp_path / "kits", clients=["x", "y"], backbone=folder,
                     keyholder_public_context=(keyholder_keys / "ckks_public.ctx").read_bytes(), task=EASYVQA)
    loop = LoopThread()
    server = loop.run(start_server(kit=load_kit(kits.server), state_dir=tmp_path / "state",
                                   keyholder_address="127.0.0.1:9"))
    try:
        address = f"127.0.0.1:{server.port}"
        with FederatedClient(kit=load_kit(kits.clients["x"]), address=address,
                             capabilities=Capabilities(backbone_sha256="0" * 64, block_shape="h64l2a4m128")) as bad:
            with pytest.raises(grpc.RpcError) as err:
                bad.hello()
            assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert "the federation seals" in err.value.details()
        with FederatedClient(kit=load_kit(kits.clients["y"]), address=address,
                             capabilities=Capabilities(backbone_sha256=manifest["sha256"],
                                                       block_shape="h64l2a4m128")) as good:
            good.hello()
        assert loop.call(lambda: [c.name for c in server.store.client_infos()]) == ["y"]
    finally:
        loop.run(server.stop(grace=0.1))
        loop.close()


def test_symbolic_links_in_a_backbone_folder_are_refused(backbone, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Attack review (issue 23 item 11): the digest skipped a linked folder and followed a
    linked file, so it did not cover what the loader reads, and a link can be re-pointed
    after the check."""
    folder, _ = backbone
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(folder / "text", elsewhere)
    for name, target in (("linked_dir", elsewhere), ("linked_file", elsewhere / "config.json")):
        copy = tmp_path / name
        shutil.copytree(folder, copy)
        (copy / name).symlink_to(target)
        with pytest.raises(KitError, match="symbolic link"):
            backbone_digest(copy)
        with pytest.raises(KitError, match="symbolic link"):
            verify_backbone(copy, expected_sha256=backbone_digest(folder))


def test_a_backbone_edited_after_start_up_is_refused_at_the_next_load(backbone, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The reward model is rebuilt from the backbone folder whenever a failed round is rolled
    back; a stack config edited after the folder was verified once changed the outputs."""
    from fedsecure.models.reward import load_reward_model, save_reward_model

    folder = tmp_path / "bb"
    shutil.copytree(backbone[0], folder)
    model, tok = build_reward_model(easyvqa_on_backbone("image_text", folder))
    save_reward_model(model, tok, tmp_path / "saved")
    load_reward_model(tmp_path / "saved")  # unchanged: loads
    config = json.loads((folder / "text" / "config.json").read_text())
    config["layer_norm_eps"] = 0.5
    (folder / "text" / "config.json").write_text(json.dumps(config))
    with pytest.raises(KitError, match="changed after it was verified"):
        load_reward_model(tmp_path / "saved")
