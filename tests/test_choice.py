"""Stage 1: Choice-Policy heads (WTA + score), VL co-training batches, and the K/V wall between choice tokens and DiT."""

import numpy as np
import pytest
import torch
from safetensors import safe_open

from xr0 import XR0Policy
from xr0.model.backbone import encode as backbone_encode
from xr0.config import IGNORE
from xr0.model.choice import (HEADS_FILE, ChoiceHeads, choice_forward, choice_losses, choose, stage1_inputs, stage1_loss,
                              vl_correct, vl_generate, vl_loss)
from xr0.data.vqa import Obj, SyntheticReach, SyntheticVQA, ask, reach_robot_spec

T = 10  # tiny preset chunk length


pytestmark = pytest.mark.usefixtures("one_thread")


def _policy(seed=0):
    return XR0Policy.from_preset("tiny", seed=seed, robots={"reach": reach_robot_spec(T)})


@pytest.fixture(scope="module")
def tiny():
    return _policy()


@pytest.fixture(scope="module")
def batch(tiny):
    ds = SyntheticReach(4, seed=0, cameras=tiny.config.cameras, size=tiny.config.image_size, chunk_len=T)
    return tiny.make_batch([ds[i] for i in range(len(ds))])


def _vl_samples(policy, n, seed=1):
    ds = SyntheticVQA(n, seed=seed, size=policy.config.image_size)
    return [ds[i] for i in range(n)]


# ---------------------------------------------------------------- losses
def test_wta_gradient_flows_only_through_the_best_candidate(tiny, batch):
    heads = ChoiceHeads.for_model(tiny.model, seed=0)
    one = {k: (v[:1] if torch.is_tensor(v) and k not in ("pixel_values", "image_grid_thw") else v)
           for k, v in batch.items()}
    n_img = len(tiny.config.cameras)
    one["image_grid_thw"] = batch["image_grid_thw"][:n_img]
    one["pixel_values"] = batch["pixel_values"][: int(one["image_grid_thw"].prod(-1).sum())]
    cand, scores = choice_forward(tiny.model, heads, one)
    cand.retain_grad()
    out = choice_losses(cand, scores, one["actions"], one["action_mask"])
    out["loss"].backward()
    m = one["action_mask"][:, None]
    d = ((cand - one["actions"][:, None]).abs() * m).sum((2, 3)) / m.sum((2, 3))
    best = int(d.argmin())
    N, D = heads.config.num_candidates, heads.config.action_dim
    others = [n for n in range(N) if n != best]
    assert cand.grad[0, best].abs().sum() > 0
    assert torch.all(cand.grad[0, others] == 0)
    # rows of the output Linear that produce the other candidates get exactly zero gradient
    w = heads.action_head.layers[-1].weight.grad.view(N, D, -1)
    b = heads.action_head.layers[-1].bias.grad.view(N, D)
    assert w[best].abs().sum() > 0 and torch.all(w[others] == 0) and torch.all(b[others] == 0)
    assert heads.score_head.layers[-1].weight.grad.abs().sum() > 0


def test_score_target_is_detached():
    torch.manual_seed(0)
    cand = torch.randn(3, 5, T, 4, requires_grad=True)
    scores = torch.randn(3, 5, requires_grad=True)
    actions, mask = torch.randn(3, T, 4), torch.ones(3, T, 4)
    mask[:, :, 3] = 0  # a padded dim must not count
    out = choice_losses(cand, scores, actions, mask)
    g_cand, g_score = torch.autograd.grad(out["score"], [cand, scores], allow_unused=True)
    assert g_cand is None or torch.all(g_cand == 0)
    d = ((cand - actions[:, None]).abs()[..., :3]).mean((2, 3))
    assert torch.allclose(out["action"], d.min(1).values.mean())
    assert torch.allclose(out["score"], ((scores - d) ** 2).mean())
    assert torch.allclose(g_score, 2 * (scores - d).detach() / scores.numel())


def test_stage1_loss_decreases_with_vl_cotraining(batch):
    policy = _policy(seed=1)
    policy.model.train()
    heads = ChoiceHeads.for_model(policy.model, seed=1)
    vl = policy.processor.vl_batch(_vl_samples(policy, 1))
    params = [p for n, p in policy.model.vlm.named_parameters() if "embed_tokens" not in n] + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=3e-3)
    hist = []
    for _ in range(30):
        out = stage1_loss(policy.model, heads, batch, vl)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        hist.append({k: v.item() for k, v in out.items()})
    assert set(hist[0]) == {"loss", "action", "score", "l1_all", "vl"}
    assert hist[-1]["action"] < 0.5 * hist[0]["action"], [h["action"] for h in hist]
    # the VL term moves slowly (the tied lm_head is the frozen embedding table) but must move
    assert hist[-1]["vl"] < hist[0]["vl"] - 0.5 and hist[-1]["loss"] < hist[0]["loss"]
    assert np.isclose(hist[0]["loss"], hist[0]["action"] + hist[0]["score"] + hist[0]["vl"], rtol=1e-5)
    prop = choose(policy.model, heads, batch)
    assert prop.shape == (4, T, 32) and torch.isfinite(prop).all()


# ---------------------------------------------------------------- VL batches
def test_vl_labels_mask_all_but_the_answer(tiny):
    img = np.full((40, 50, 3), 128, np.uint8)  # resized to the policy's 64x64
    samples = [{"images": [img, img], "question": "What colour is the leftmost object?", "answer": "red"},
               {"images": [], "question": "Is the sky blue?", "answer": "yes, it is"}]
    b = tiny.processor.vl_batch(samples)
    tok = tiny.processor.tokenizer
    assert b["labels"].shape == b["input_ids"].shape
    assert b["pixel_values"].shape[0] == 2 * 16 and b["image_grid_thw"].tolist() == [[1, 4, 4]] * 2
    for row, s in enumerate(samples):
        lab, ids, attn = b["labels"][row], b["input_ids"][row], b["attention_mask"][row]
        sel = lab != IGNORE
        assert tok.decode(lab[sel]) == s["answer"] + "<|im_end|>"
        assert torch.equal(lab[sel], ids[sel])
        assert not sel[attn == 0].any(), "padding must not be labelled"
        text = tok.decode(ids[attn == 1])
        assert text.endswith(f"<|im_start|>assistant\n{s['answer']}<|im_end|>\n")
        assert text.count("<|image_pad|>") == 4 * len(s["images"])
    assert vl_loss(tiny.model, b).ndim == 0
    assert vl_correct(tiny.model, b).shape == (2,)
    with pytest.raises(ValueError, match="answer"):
        tiny.processor.vl_batch([{"images": [], "question": "q?", "answer": ""}])


def test_vl_correct_agrees_with_greedy_decoding(tiny):
    """A copy of the tiny model taught one sample's answer: for it both say "correct", for the others both say
    "wrong" (with random weights both would say "wrong" everywhere, which could not catch a disagreement)."""
    import copy

    samples = _vl_samples(tiny, 3)
    model = copy.deepcopy(tiny.model).train()
    taught = tiny.processor.vl_batch(samples[:1])
    opt = torch.optim.Adam(model.vlm.parameters(), lr=3e-3)
    for _ in range(60):
        opt.zero_grad()
        vl_loss(model, taught).backward()
        opt.step()
    model.eval()
    correct = vl_correct(model, tiny.processor.vl_batch(samples))
    answers = vl_generate(model, tiny.processor, samples, max_new_tokens=4)
    assert answers[0] == samples[0]["answer"] and bool(correct[0])
    assert correct.tolist() == [a == s["answer"] for a, s in zip(answers, samples)]


# ---------------------------------------------------------------- the K/V wall
def test_choice_tokens_never_reach_the_dit_prefix(tiny, batch):
    before = tiny.model.encode(batch)  # no heads exist yet
    heads = ChoiceHeads.for_model(tiny.model, seed=0)
    inp = stage1_inputs(tiny.model, heads, batch)
    L, K = batch["input_ids"].shape[1], heads.num_tokens
    assert inp.inputs_embeds.shape[1] == L + K and K == T + 2
    cand, _ = choice_forward(tiny.model, heads, batch)
    cand.sum().backward()  # heads used and given gradients
    after = tiny.model.encode(batch)
    for pre in (before, after):
        assert all(k.shape[2] == L for k in pre.keys) and pre.position_ids.shape[-1] == L
        assert torch.equal(pre.pad_mask, batch["attention_mask"].bool())
    for a, b in zip(before.keys + before.values, after.keys + after.values):
        assert torch.equal(a, b)
    assert torch.equal(before.position_ids, after.position_ids)
    # the stage-1 pass only appends: its K/V on the prompt's real positions equal the DiT's (the text stack is
    # causal), and the extra positions carry the choice tokens
    staged, _ = backbone_encode(tiny.model.vlm, inp.batch, tiny.config.expert.num_layers, inp.inputs_embeds)
    real = batch["attention_mask"].bool()
    for a, b in zip(before.keys, staged.keys):
        assert torch.allclose(a.transpose(1, 2)[real], b[:, :, :L].transpose(1, 2)[real], atol=1e-5)
    # the flow-matching loss never touches the heads
    heads.zero_grad(set_to_none=True)
    tiny.model.loss(batch)["loss"].backward()
    assert all(p.grad is None for p in heads.parameters())
    tiny.model.zero_grad(set_to_none=True)


# ---------------------------------------------------------------- checkpoint
def test_heads_save_load_round_trip(tiny, batch, tmp_path):
    heads = ChoiceHeads.for_model(tiny.model, num_candidates=3, depth=1, seed=3)
    file = heads.save(tmp_path)
    assert file.name == HEADS_FILE
    with safe_open(str(file), "pt") as f:
        assert all(k.startswith("choice.") for k in f.keys())
    back = ChoiceHeads.load(tmp_path)
    assert back.config == heads.config
    sd, sd2 = heads.state_dict(), back.state_dict()
    assert sd.keys() == sd2.keys() and all(torch.equal(sd[k], sd2[k]) for k in sd)
    assert torch.equal(choose(tiny.model, heads, batch), choose(tiny.model, back, batch))
    with pytest.raises(FileNotFoundError):
        ChoiceHeads.load(tmp_path / "nowhere")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / HEADS_FILE).write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a readable"):
        ChoiceHeads.load(tmp_path / "bad")
    other = ChoiceHeads.for_model(XR0Policy.from_preset("tiny", device="meta", chunk_len=4).model)
    with pytest.raises(ValueError, match="do not fit"):
        stage1_inputs(tiny.model, other, batch)


# ---------------------------------------------------------------- synthetic data
def test_synthetic_tasks_are_deterministic_and_exact():
    a, b, c = SyntheticVQA(5, seed=7), SyntheticVQA(5, seed=7), SyntheticVQA(5, seed=8)
    for i in range(5):
        assert a[i]["question"] == b[i]["question"] and a[i]["answer"] == b[i]["answer"]
        assert np.array_equal(a[i]["images"][0], b[i]["images"][0])
    assert any(not np.array_equal(a[i]["images"][0], c[i]["images"][0]) for i in range(5))
    scene = [Obj("blue", "square", 0.5, 0.0, 0.15), Obj("red", "circle", -0.5, 0.2, 0.15)]
    rng = np.random.default_rng(0)
    assert ask(scene, "leftmost", rng) == ("What colour is the leftmost object?", "red")
    assert ask(scene, "rightmost", rng)[1] == "blue" and ask(scene, "further_left", rng)[1] == "red"
    assert ask(scene, "count", rng)[1] == "two"
    r = SyntheticReach(3, seed=0, cameras=("Base View", "Left-Wrist View"), chunk_len=T)[2]
    assert r["actions"].shape == (T, 2) and set(r["images"]) == {"Base View", "Left-Wrist View"}
    assert np.allclose(r["actions"][0], r["state"] + (r["actions"][-1] - r["state"]) / T, atol=1e-6)
