"""The training-memory planner (xr0.train.memory): its parameter counts are the real model's, its per-layer activation
formulas match what autograd really saves (saved-tensor hooks on the tiny model, fp32 and bf16 autocast), and the
plan moves the right way (checkpointing, LoRA, FSDP). The RSS comparison of real training steps lives in
benchmarks/train_memory.py (slow; one tiny run is here under -m slow)."""

import collections
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from xr0 import XR0Policy
from xr0.bench import observation, plan_workload
from xr0.cli import main as xr0_main
from xr0.config import get_preset
from xr0.train import memory as P
from xr0.train.lora import add_lora
from xr0.train.recipes import EMBEDDINGS, get_recipe

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]
RECIPE = {"full": "post-sync", "frozen": "stage2", "lora": "post-sync"}


def part_of(name: str) -> str:
    if name == EMBEDDINGS:
        return "embeddings"
    if name.startswith("vlm.model.visual."):
        return "vision"
    return "text" if name.startswith("vlm.") else "expert"


def configured(tune: str, lora_rank: int = 4) -> XR0Policy:
    """The tiny policy with what the trainer sets for `tune`: the recipe's freezing, LoRA adapters + a frozen VLM."""
    policy = XR0Policy.from_preset("tiny", seed=0)
    model = policy.model
    recipe = get_recipe(RECIPE[tune])
    recipe.configure(model)
    if tune == "lora":
        add_lora(model, lora_rank)
        for name, p in model.named_parameters():
            if name.startswith("vlm.") and not name.endswith((".lora_A", ".lora_B")):
                p.requires_grad_(False)
    recipe.set_mode(model)
    return policy


# ---------------------------------------------------------------- parameter counts
def test_counts_are_the_real_tiny_model():
    config = get_preset("tiny")
    counts = P.count_parts(P.meta_model(config))
    model = XR0Policy.from_preset("tiny", seed=0).model
    real = collections.Counter()
    for name, p in model.named_parameters():  # named_parameters lists the tied lm_head once
        real[part_of(name)] += p.numel()
    assert {k: getattr(counts, k) for k in P.PARTS} == dict(real)
    assert counts.total == sum(p.numel() for p in model.parameters())
    lm = model.vlm.model.language_model
    assert counts.text_layers == sum(p.numel() for p in lm.layers.parameters())
    assert counts.text == counts.text_layers + lm.norm.weight.numel()
    assert counts.root < counts.total and counts.linear["expert"] <= counts.expert


@pytest.mark.parametrize("tune", P.TUNES)
def test_planned_trainable_parameters_are_what_the_recipe_trains(tune):
    counts = P.count_parts(P.meta_model(get_preset("tiny")))
    dims = P.Dims.from_config(get_preset("tiny"))
    row = P.plan(counts, dims, P.Workload(batch=1, vlm_tokens=80, patches=32),
                 P.TrainingSetup(tune, dtype="fp32", attn="cpu", lora_rank=4))
    model = configured(tune, lora_rank=4).model
    assert row.trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)
    if tune == "lora":
        adapters = sum(p.numel() for n, p in model.named_parameters() if n.endswith((".lora_A", ".lora_B")))
        assert dims.lora_params(4) == adapters


# ---------------------------------------------------------------- activation formulas vs autograd's saved tensors
def saved_bytes(policy: XR0Policy, batch: dict, dtype: str) -> dict[str, int]:
    """Bytes autograd saves for backward during one training forward, per part (distinct storages; parameters and
    autocast's weight copies left out). The last text layer's post-attention part and the final norm go to "freed":
    their output is unused, so their graph is gone when the forward returns (the plan leaves them out)."""
    model = policy.model
    scope = ["rest"]
    hooks = []
    lm = model.vlm.model.language_model
    modules = [(layer, "text") for layer in lm.layers] + [(model.vlm.model.visual, "vision")]
    modules += [(layer, "expert") for layer in model.dit.layers]
    modules += [(lm.layers[-1].post_attention_layernorm, "freed"), (lm.layers[-1].mlp, "freed"), (lm.norm, "freed")]
    for module, name in modules:
        hooks.append(module.register_forward_pre_hook(lambda m, a, name=name: scope.append(name)))
        hooks.append(module.register_forward_hook(lambda m, a, o: scope.pop() and None))
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen, out = set(), collections.Counter()

    def pack(t):
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr in params or ptr in seen:
            return t
        seen.add(ptr)
        if t.grad_fn is not None and type(t.grad_fn).__name__ == "TBackward0":
            out["weight_copies"] += storage.nbytes()  # autocast's bf16 copy of a weight, used transposed
        else:
            out[scope[-1]] += storage.nbytes()
        return t

    recipe_opts = get_recipe("post-sync").options(policy.config.chunk_len, random.Random(0),
                                                  torch.Generator().manual_seed(0))
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
                torch.autocast("cpu", torch.bfloat16, enabled=dtype == "bf16"):
            model.loss(batch, recipe_opts)
    finally:
        for h in hooks:
            h.remove()
    return dict(out)


@pytest.mark.parametrize("tune,dtype,padded", [("full", "fp32", False), ("full", "bf16", False),
                                               ("full", "fp32", True), ("frozen", "bf16", False),
                                               ("lora", "fp32", False), ("lora", "bf16", True)])
def test_activation_formulas_match_saved_tensors(tune, dtype, padded):
    policy = configured(tune)
    if dtype == "bf16":  # the trainer's frozen weights in the autocast dtype (--freeze / --lora-rank)
        for p in policy.model.parameters():
            if not p.requires_grad:
                p.data = p.data.to(torch.bfloat16)
    rng = np.random.default_rng(0)
    T, D = policy.config.chunk_len, policy.robot().action_dim
    samples = [dict(observation(policy, i), actions=rng.normal(size=(T, D)).astype(np.float32)) for i in range(4)]
    for i, s in enumerate(samples):
        s.pop("prefix")
        if padded and i % 2:
            s["instruction"] = "go"  # a shorter prompt: the batch is right-padded, SDPA gets a mask
    batch = policy.make_batch(samples)
    assert bool((batch["attention_mask"] == 0).any()) == padded
    measured = saved_bytes(policy, batch, dtype)
    work = P.Workload(batch=4, vlm_tokens=batch["input_ids"].shape[1], patches=batch["pixel_values"].shape[0] // 4,
                      images=len(policy.config.cameras), padded=padded)
    plan = P.activations(P.Dims.from_config(policy.config), work,
                         P.TrainingSetup(tune, dtype=dtype, attn="cpu", lora_rank=4))
    assert measured.get("text", 0) == pytest.approx(plan["text"], rel=0.03, abs=1)
    assert measured.get("vision", 0) == pytest.approx(plan["vision"], rel=0.03, abs=1)
    # the DiT layers + its projectors, heads and loss (planned together under "expert")
    assert measured["expert"] + measured.get("rest", 0) == pytest.approx(plan["expert"], rel=0.1)
    if dtype == "bf16":  # autocast's weight copies: 2 bytes per trainable linear parameter
        counts = P.count_parts(policy.model)
        row = P.plan(counts, P.Dims.from_config(policy.config), work, P.TrainingSetup(tune, dtype="bf16", attn="cpu",
                                                                                     lora_rank=4))
        assert measured["weight_copies"] == pytest.approx(row.full["autocast_copies"], rel=0.05)


# ---------------------------------------------------------------- the plan moves the right way
@pytest.fixture(scope="module")
def big():
    config = get_preset("xr0-4b")
    return P.count_parts(P.meta_model(config)), P.Dims.from_config(config), plan_workload(config, 8)


@pytest.mark.parametrize("preset", ["tiny", "xr0-4b"])
def test_plan_is_monotonic(preset, big):
    if preset == "xr0-4b":
        counts, dims, work = big
    else:
        config = get_preset(preset)
        counts, dims, work = P.count_parts(P.meta_model(config)), P.Dims.from_config(config), plan_workload(config, 8)
    run = lambda **kw: P.plan(counts, dims, work, P.TrainingSetup(**kw))  # noqa: E731
    for tune in P.TUNES:
        plain, ckpt = run(tune=tune), run(tune=tune, checkpointing=True)
        act = lambda r: sum(v for k, v in r.full.items() if k.startswith("activations_"))  # noqa: E731
        assert act(ckpt) < act(plain), tune
        assert ckpt.total <= plain.total, tune
        for row in (plain, ckpt):  # the columns are what is alive at the peak: they add up to it
            assert row.weights + row.grads + row.optimizer + row.activations + row.other == pytest.approx(
                row.total, abs=8)
    assert run(tune="lora").total < run(tune="full").total
    assert run(tune="frozen").total < run(tune="full").total
    full_ddp8, full_fsdp8 = run(tune="full", strategy="ddp", gpus=8), run(tune="full", strategy="fsdp", gpus=8)
    if preset == "xr0-4b":  # (tiny is 97 % token embedding, which FSDP's root unit keeps gathered all step)
        assert full_fsdp8.total < full_ddp8.total / 2
    assert full_ddp8.total > run(tune="full").total  # the gradient buckets
    assert run(tune="full", strategy="fsdp", gpus=8).weights < run(tune="full", strategy="fsdp", gpus=2).weights


def test_xr0_4b_plan_numbers(big):
    """The headline numbers of docs/training.md ("Memory plan"), so a change to the model is noticed."""
    counts, dims, work = big
    gib = lambda **kw: P.plan(counts, dims, work, P.TrainingSetup(**kw)).total / P.GIB  # noqa: E731
    assert counts.total == pytest.approx(4.716e9, rel=1e-3)
    assert 12 < gib(tune="lora", checkpointing=True) < 20  # fits a 24 GB card
    assert gib(tune="lora") > gib(tune="lora", checkpointing=True) + 5
    assert gib(tune="full") > 75  # a single 80 GB card is not enough for full fine-tuning at batch 8
    assert gib(tune="full", checkpointing=True, strategy="fsdp", gpus=8) < 24
    # AdamW's foreach step allocates sqrt(exp_avg_sq) for all trainable parameters: 4 bytes each
    foreach = P.plan(counts, dims, work, P.TrainingSetup(tune="full"))
    assert foreach.full["optimizer_step_temp"] == foreach.full["grads"]
    assert P.plan(counts, dims, work, P.TrainingSetup(tune="full", adamw="fused")).full["optimizer_step_temp"] == 0


def test_bench_plan_cli(capsys):
    assert xr0_main(["bench", "train", "--preset", "tiny", "--plan", "--batch-size", "2", "--gpus", "1,2",
                     "--json"]) == 0
    out, err = capsys.readouterr()
    res = json.loads(out.strip().splitlines()[-1])
    assert res["bench"] == "train-plan" and res["dtype"] == "bf16" and res["batch_size"] == 2
    labels = [r["setup"] for r in res["rows"]]
    assert "lora r=16 +ckpt, single" in labels and "full, fsdp x2" in labels
    assert not any(label.startswith("lora") and "fsdp" in label for label in labels)  # the trainer refuses it
    assert "| setup |" in err and res["counts"]["total"] == sum(res["counts"][k] for k in P.PARTS)


# ---------------------------------------------------------------- one real measurement (RSS), slow
@pytest.mark.slow
def test_measured_tiny_step_is_near_the_plan():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "train_memory.py"), "--presets", "tiny",
                           "--setups", "full", "--batches", "8", "--repeats", "1", "--steps", "3"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (res,) = json.loads(proc.stdout.strip().splitlines()[-1])["results"]
    if not res["peak_reset"]:
        pytest.skip("/proc/self/clear_refs is not writable here: the peak RSS cannot be reset")
    assert 0.75 < res["ratio"] < 1.6, res
    assert res["measured_state_mib"] == pytest.approx(res["planned_state_mib"], rel=0.3, abs=0.5)
