"""Fine-tuning at scale on the tiny preset: activation checkpointing gives the same gradients, LoRA trains only its
adapters (and the DiT), is merged on save into a checkpoint that loads strictly and computes what the adapted model
computes, resumes exactly; --freeze; --init from an official release folder onto a new robot type."""

import json

import numpy as np
import pytest
import torch

from xr0 import XR0Policy
from xr0.model.loss import LossOptions
from xr0.train import TrainConfig, Trainer
from xr0.train.lora import ADAPTERS, add_lora, lora_modules

from conftest import random_observation
from test_train import metrics, snapshot, write_dataset

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("lerobot"))


def config(dataset, out, **kw):
    base = dict(preset=None if "init" in kw else "tiny", recipe="post-async", data=str(dataset), out=str(out), robot_type="toy", steps=6, batch_size=2,
                lr=3e-3, warmup=1, save_every=3, log_every=1, dtype="fp32", seed=0, progress=False)
    return TrainConfig(**{**base, **kw})


def _batch(policy):
    rng = np.random.default_rng(0)
    samples = [dict(random_observation(policy, i), actions=rng.normal(size=(10, 32)).astype(np.float32))
               for i in range(2)]
    return policy.make_batch(samples)


def _grads(policy, batch):
    policy.model.zero_grad()
    opts = LossOptions(prefix_len=3, reweight=True, repeat=2, generator=torch.Generator().manual_seed(0))
    loss = policy.model.loss(batch, opts)["loss"]
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in policy.model.named_parameters() if p.grad is not None}


def test_activation_checkpointing_gives_the_same_gradients():
    policy = XR0Policy.from_preset("tiny", seed=0)
    policy.model.train()
    batch = _batch(policy)
    loss, plain = _grads(policy, batch)
    calls = []
    layer = policy.model.vlm.model.language_model.layers[-1].self_attn
    layer.register_forward_pre_hook(lambda *a: calls.append(1))  # the replay calls the attention module again
    policy.model.set_activation_checkpointing(True)
    loss_ck, ckpt = _grads(policy, batch)
    assert len(calls) == 2  # forward + recompute in backward: checkpointing is on
    assert loss_ck == loss and set(ckpt) == set(plain)
    worst = max(((plain[n] - g).norm() / plain[n].norm().clamp_min(1e-30)).item() for n, g in ckpt.items())
    assert worst <= 1e-6, worst


def test_lora_merged_and_unmerged_outputs_agree():
    policy = XR0Policy.from_preset("tiny", seed=0)
    names = add_lora(policy.model, rank=4, alpha=8)
    assert len(names) == 7 * len(policy.model.vlm.model.language_model.layers)
    with torch.no_grad():  # a non-zero update (B starts at 0)
        for m in lora_modules(policy.model).values():
            m.lora_B.normal_(0, 0.05)
    state = policy.model.state_dict()
    assert not any("lora" in k for k in state)  # the official layout, merged
    merged = XR0Policy.from_state(policy.config, policy.robots, dict(state))
    obs = random_observation(policy)
    a = policy.sample(**obs, seed=3)
    b = merged.sample(**obs, seed=3)
    assert np.abs(a - b).max() <= 1e-6 * np.abs(a).max()
    base = XR0Policy.from_preset("tiny", seed=0).sample(**obs, seed=3)
    assert np.abs(a - base).max() > 1e-3  # the adapters do change the output


def test_lora_trains_only_adapters_and_the_expert_and_saves_merged(dataset, tmp_path):
    tr = Trainer(config(dataset, tmp_path / "lora", lora_rank=4, grad_checkpointing=True, freeze=("vision",)))
    trainable = {n for n, p in tr.core.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("model.") for n in trainable)
    vlm = {n for n in trainable if n.startswith("model.vlm.")}
    assert vlm and all(n.endswith((".lora_A", ".lora_B")) for n in vlm)
    assert any(n.startswith("model.dit.") for n in trainable)
    before = snapshot(tr.policy)
    tr.run()
    after = snapshot(tr.policy)
    last = f"vlm.model.language_model.layers.{len(tr.policy.model.vlm.model.language_model.layers) - 1}."
    for n, v in before.items():
        changed = not torch.equal(v, after[n])
        if not (n.startswith("vlm.") and not n.endswith((".lora_A", ".lora_B"))):
            # adapters and the DiT train; the last VLM layer's query/output/MLP feed no K/V the DiT reads
            assert changed or (n.startswith(last) and not any(k in n for k in ("k_proj", "v_proj"))), n
        else:
            assert not changed, n  # the frozen VLM, including the adapted linears' own weights
    ckpt = tmp_path / "lora" / "checkpoints" / "step_000006"
    assert (ckpt / ADAPTERS).is_file()
    loaded = XR0Policy.from_pretrained(ckpt)  # strict: the official layout, no adapters
    obs = random_observation(tr.policy, state_dim=8)
    tr.policy.model.eval()
    a, b = tr.policy.sample(**obs, seed=1, robot_type="toy"), loaded.sample(**obs, seed=1, robot_type="toy")
    assert np.abs(a - b).max() <= 1e-5 * max(1.0, np.abs(a).max())


def test_lora_resume_is_identical(dataset, tmp_path):
    kw = dict(lora_rank=4, grad_checkpointing=True)
    Trainer(config(dataset, tmp_path / "full", **kw)).run()
    Trainer(config(dataset, tmp_path / "cut", stop_after=3, **kw)).run()
    Trainer(config(dataset, tmp_path / "cut", resume=True, **kw)).run()
    full, cut = metrics(tmp_path / "full"), metrics(tmp_path / "cut")
    assert [r["loss"] for r in full] == [r["loss"] for r in cut]


def test_freeze_parts(dataset, tmp_path):
    tr = Trainer(config(dataset, tmp_path / "frz", freeze=("vision", "embeddings"), recipe="post-sync",
                        stop_after=2))
    before = snapshot(tr.policy)
    tr.run()
    after = snapshot(tr.policy)
    for n, v in before.items():
        if n.startswith("vlm.model.visual.") or "embed_tokens" in n:
            assert torch.equal(v, after[n]), n
    assert not torch.equal(before["dit.layers.0.attn.qkv_proj.weight"], after["dit.layers.0.attn.qkv_proj.weight"])
    with pytest.raises(ValueError, match="unknown part"):
        Trainer(config(dataset, tmp_path / "bad", freeze=("wheels",)))


def test_init_from_an_official_release_onto_a_new_robot_type(dataset, tmp_path):
    from test_official import write_official

    release = write_official(tmp_path / "release", XR0Policy.from_preset("tiny", seed=1))
    tr = Trainer(config(dataset, tmp_path / "ft", init=str(release), lora_rank=4, stop_after=3))
    assert "toy" in tr.policy.robots and len(tr.policy.robots) > 1  # the release's robots kept, the new one added
    assert tr.policy.config.expert.local_window == 4 and tr.policy.config.expert.rope_offset == 10  # April recipe
    tr.run()
    loaded = XR0Policy.from_pretrained(tmp_path / "ft" / "checkpoints" / "step_000003")
    spec = loaded.robot("toy")
    assert spec.action_dim == 7 and spec.action_mask[:7].all() and not spec.action_mask[7:].any()
    meta = json.loads((tmp_path / "ft" / "checkpoints" / "step_000003" / "config.json").read_text())
    assert "toy" in meta["robots"]
    # the requeue command (--init with --resume) continues the run; the LoRA base comes back from the release
    again = Trainer(config(dataset, tmp_path / "ft", init=str(release), lora_rank=4, resume=True))
    assert again.step == 3
    base = XR0Policy.from_pretrained(release).model.state_dict()
    q = "vlm.model.language_model.layers.0.self_attn.q_proj"
    assert torch.equal(dict(again.policy.model.named_parameters())[q + ".weight"], base[q + ".weight"])


def test_cli_flags():
    import argparse

    from xr0.train import cli as train_cli

    parser = argparse.ArgumentParser()
    train_cli.add_arguments(parser)
    cfg = train_cli.config_from_args(parser.parse_args(
        ["--lora-rank", "8", "--lora-alpha", "16", "--lora-targets", "q_proj,v_proj", "--freeze", "vision,expert",
         "--grad-checkpointing", "--init", "some/release", "--resume"]))
    assert (cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets) == (8, 16.0, ("q_proj", "v_proj"))
    assert cfg.freeze == ("vision", "expert") and cfg.grad_checkpointing and cfg.resume and cfg.init
    cfg.validate()  # --resume with --init: the init serves a first start
    cfg.fsdp = True
    with pytest.raises(ValueError, match="LoRA runs use DDP"):
        cfg.validate()


def test_bf16_memory_mode_holds_frozen_weights_in_bf16(dataset, tmp_path):
    tr = Trainer(config(dataset, tmp_path / "bf16", lora_rank=4, dtype="bf16", stop_after=3, steps=3))
    dtypes = {n: p.dtype for n, p in tr.policy.model.named_parameters()}
    assert all(dtypes[n] == (torch.float32 if p.requires_grad else torch.bfloat16)
               for n, p in tr.policy.model.named_parameters())
    assert dtypes["vlm.model.language_model.layers.0.self_attn.q_proj.weight"] == torch.bfloat16
    assert dtypes["vlm.model.language_model.layers.0.self_attn.q_proj.lora_A"] == torch.float32
    tr.run()
    loaded = XR0Policy.from_pretrained(tmp_path / "bf16" / "checkpoints" / "step_000003")  # written in fp32
    assert {p.dtype for p in loaded.model.parameters()} == {torch.float32}


def test_bf16_lora_saves_its_whole_update(dataset, tmp_path):
    """A frozen base held in bf16 and updates far below bf16's spacing: the saved weights minus the --init weights
    are (alpha / r) B A, read from the files, for every adapted linear; the frozen weights are saved as loaded; the
    reloaded checkpoint computes what the adapted model computes on the weights as loaded."""
    from safetensors.torch import load_file

    init = tmp_path / "init"
    XR0Policy.from_preset("tiny", seed=3).save_pretrained(init)  # fp32, as a fine-tune starts from
    tr = Trainer(config(dataset, tmp_path / "ft", init=str(init), lora_rank=4, dtype="bf16", lr=1e-4, steps=3,
                       save_every=3, stop_after=3))
    assert tr.policy.model.vlm.model.language_model.layers[0].self_attn.q_proj.weight.dtype == torch.bfloat16
    tr.run()
    ckpt = tmp_path / "ft" / "checkpoints" / "step_000003"
    before, after = load_file(str(init / "model.safetensors")), load_file(str(ckpt / "model.safetensors"))
    adapters = load_file(str(ckpt / ADAPTERS))
    names = sorted({k.rsplit(".", 1)[0] for k in adapters})
    assert len(names) == 4 * 7  # tiny: 4 text layers x 7 projections
    lost, trained = 0.0, 0
    for name in names:
        delta = (adapters[f"{name}.lora_B"] @ adapters[f"{name}.lora_A"]) * 1.0  # alpha = r: scaling 1
        saved = after[f"{name}.weight"] - before[f"{name}.weight"]
        if not delta.any():  # the last layer's query / output / MLP feed no K/V the DiT reads: no gradient
            assert not saved.any(), name
            continue
        trained += 1
        assert (saved - delta).norm() <= 1e-3 * delta.norm(), name
        rounded = (before[f"{name}.weight"].bfloat16().float() + delta).bfloat16().float() - before[f"{name}.weight"]
        lost = max(lost, float((rounded - delta).norm() / delta.norm()))
    assert trained >= 20 and lost > 0.1  # merging into the bf16 copy would have lost over a tenth of the update
    frozen = "vlm.model.visual.blocks.0.attn.qkv.weight"
    assert torch.equal(after[frozen], before[frozen])  # a frozen weight comes back as loaded, not bf16-rounded
    loaded = XR0Policy.from_pretrained(ckpt)
    obs = random_observation(tr.policy, state_dim=8)
    obs["images"] = dict(zip(loaded.robot("toy").cameras, obs["images"].values()))
    with tr.weights_as_loaded():
        tr.policy.model.eval().float()
        a = tr.policy.sample(**obs, seed=1, robot_type="toy")
    b = loaded.sample(**obs, seed=1, robot_type="toy")
    assert np.abs(a - b).max() <= 1e-5 * max(1.0, np.abs(a).max())


def test_no_silent_defaults_under_init(dataset, tmp_path, capsys):
    """--init onto a robot type the checkpoint has: the data's statistics replace its own and the run says so;
    --keep-stats keeps them and says so; --chunk-len / --image-size for it fail naming why; no --preset or --init,
    or both, is an error."""
    init = tmp_path / "init"
    first = Trainer(config(dataset, tmp_path / "first", stop_after=1, steps=1, save_every=1))
    first.run()
    XR0Policy.from_pretrained(tmp_path / "first").save_pretrained(init)
    old = XR0Policy.from_pretrained(init).robot("toy")
    other = tmp_path / "other"  # the same cameras, other actions: other statistics
    from test_train import write_dataset
    write_dataset(other, lengths=(30, 26))
    capsys.readouterr()
    tr = Trainer(config(other, tmp_path / "ft", init=str(init), stop_after=1))
    err = capsys.readouterr().err
    assert "robot type 'toy' (T = 10" in err and "statistics from the data, replacing" in err
    assert not np.allclose(tr.policy.robot("toy").action_mean, old.action_mean)
    kept = Trainer(config(other, tmp_path / "keep", init=str(init), keep_stats=True, stop_after=1))
    assert "statistics kept from" in capsys.readouterr().err
    np.testing.assert_array_equal(kept.policy.robot("toy").action_mean, old.action_mean)
    with pytest.raises(ValueError, match="--image-size .*robot type 'toy'"):
        Trainer(config(other, tmp_path / "img", init=str(init), image_size=(32, 32)))
    with pytest.raises(ValueError, match="--keep-stats: .* has no statistics of robot type 'new'"):
        Trainer(config(other, tmp_path / "new", init=str(init), keep_stats=True, robot_type="new"))
    with pytest.raises(ValueError, match="give --preset NAME .* or --init"):
        Trainer(config(other, tmp_path / "none", preset=None))
    with pytest.raises(ValueError, match="--preset tiny and --init .* both given"):
        Trainer(config(other, tmp_path / "both", preset="tiny", init=str(init)))
