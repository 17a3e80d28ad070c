"""Does stage 1 (Choice-Policy training) erase the VLM's vision-language skill, and does 1:6 VL co-training keep it?

Spec §4 / §8.5: XR-0 without VL data scores 0 on every VL benchmark; with VL:robot = 1:6 it keeps most of Qwen's
scores. This script reproduces the setting in miniature on CPU (docs/forgetting.md has results and commands):

  (a) give a randomly initialised `tiny` VLM a VL skill: next-token training on synthetic VQA
      (xr0.data.vqa.SyntheticVQA), text stack and token embeddings trainable, the random ViT frozen, until
      held-out exact-match accuracy is high (`--skill-cache DIR` saves this model, or reuses it);
  (b) from that snapshot run stage 1 twice with the same robot batches (SyntheticReach, "move to the red circle"),
      training what `xr0 train --recipe stage1` trains (the whole VLM) plus the choice heads: without VL data, and
      with VL co-training at VL:robot = 1:6 samples per step;
  (c) report held-out VQA exact-match accuracy (teacher-forced full-vocabulary argmax of every answer token and the
      closing <|im_end|>, i.e. what greedy decoding returns; checked against real greedy decoding on a subset)
      before and after each arm, plus the robot task's error so both arms are seen to learn it.

Prints one JSON object. Plain AdamW loops around xr0.model.choice.stage1_loss. The run in docs/forgetting.md took 694 s for
(a) and 270 s for the co-trained arm, one thread each on a shared 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import torch
from safetensors.torch import load_model, save_model
from tqdm import tqdm

from xr0 import XR0Policy
from xr0.model.choice import (ChoiceHeads, candidate_l1, choice_forward, stage1_loss, vl_correct, vl_generate,
                              vl_loss)
from xr0.train.recipes import get_recipe
from xr0.data.vqa import QUESTION_KINDS, SyntheticReach, SyntheticVQA, reach_robot_spec

VL_TRAIN_SEED, VL_EVAL_SEED, ROBOT_TRAIN_SEED, ROBOT_EVAL_SEED = 1, 2, 3, 4


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest for tiny ops on a busy box)")
    p.add_argument("--kinds", default="leftmost,rightmost", help=f"VQA question kinds, from {','.join(QUESTION_KINDS)}")
    p.add_argument("--vl-steps", type=int, default=1200, help="phase (a) steps")
    p.add_argument("--vl-batch", type=int, default=32, help="phase (a) batch")
    p.add_argument("--vl-lr", type=float, default=1e-3)
    p.add_argument("--vit-lr-mult", type=float, default=0.0,
                   help="ViT learning-rate multiplier in phase (a) (0 = keep the random ViT frozen)")
    p.add_argument("--stage1-steps", type=int, default=600)
    p.add_argument("--robot-batch", type=int, default=12)
    p.add_argument("--cotrain-vl-batch", type=int, default=2, help="VL samples per step in the co-trained arm (1:6)")
    p.add_argument("--stage1-lr", type=float, default=3e-4)
    p.add_argument("--stage1-warmup", type=int, default=50, help="linear learning-rate warm-up steps in stage 1")
    p.add_argument("--stage1-vit-lr-mult", type=float, default=1.0, help="ViT learning-rate multiplier in stage 1")
    p.add_argument("--eval-n", type=int, default=300, help="held-out VQA questions")
    p.add_argument("--robot-eval-n", type=int, default=48)
    p.add_argument("--greedy-check", type=int, default=24, help="questions decoded greedily to validate the metric")
    p.add_argument("--curve-points", type=int, default=4, help="VQA evaluations during each stage-1 arm")
    p.add_argument("--skill-cache", default=None, help="folder to save phase (a)'s model in, or to load it from")
    p.add_argument("--out", default=None, help="also write the JSON here")
    return p.parse_args(argv)


def vqa_accuracy(policy, batches, kinds) -> dict:
    policy.model.eval()
    hits = torch.cat([vl_correct(policy.model, b) for b in batches])
    policy.model.train()
    per = {}
    for k in sorted(set(kinds)):
        idx = [i for i, x in enumerate(kinds) if x == k]
        per[k] = round(float(hits[idx].float().mean()), 4)
    return {"accuracy": round(float(hits.float().mean()), 4), "n": len(kinds), "per_kind": per}


@torch.no_grad()
def robot_error(policy, heads, batches) -> dict:
    """Masked mean L1 (normalised units) of the best-scored candidate (what `choose` returns), of the best candidate
    in hindsight, and of 'stay where you are' for scale."""
    policy.model.eval()
    chosen = oracle = stay = n = 0.0
    for b in batches:
        cand, scores = choice_forward(policy.model, heads, b)
        d = candidate_l1(cand, b["actions"], b["action_mask"])
        chosen += float(d.gather(1, scores.argmin(1, keepdim=True)).sum())
        oracle += float(d.min(1).values.sum())
        still = b["state"][:, None, None, :].expand(-1, 1, *b["actions"].shape[1:])  # (x, y) in the action dims
        stay += float(candidate_l1(still, b["actions"], b["action_mask"]).sum())
        n += d.shape[0]
    policy.model.train()
    return {"chosen_l1": round(chosen / n, 4), "best_candidate_l1": round(oracle / n, 4),
            "stay_still_l1": round(stay / n, 4)}


def skill_config(args) -> dict:
    """The arguments phase (a) depends on (a cached skill is reused only if they match)."""
    return {k: getattr(args, k) for k in ("preset", "seed", "kinds", "vl_steps", "vl_batch", "vl_lr", "vit_lr_mult",
                                          "eval_n")}


def train_skill(policy, args, vl_train, eval_samples, eval_batches, eval_kinds) -> dict:
    """Phase (a): next-token training on synthetic VQA until the VLM answers held-out questions."""
    result = {}
    t0 = time.time()
    result["vqa_random_init"] = vqa_accuracy(policy, eval_batches, eval_kinds)
    vis = [p for n, p in policy.model.vlm.named_parameters() if "visual" in n]
    rest = [p for n, p in policy.model.vlm.named_parameters() if "visual" not in n]  # text stack + embeddings (= lm_head)
    for p in vis:
        p.requires_grad_(args.vit_lr_mult > 0)
    groups = [dict(params=rest)] + ([dict(params=vis, lr=args.vl_lr * args.vit_lr_mult)] if args.vit_lr_mult > 0 else [])
    opt = torch.optim.AdamW(groups, lr=args.vl_lr, weight_decay=0.0)
    for p in policy.model.parameters():
        if not any(p is q for g in groups for q in g["params"]):
            p.requires_grad_(False)
    curve_a = []
    for step in tqdm(range(args.vl_steps), desc="(a) VQA skill", unit="step"):
        b = policy.processor.vl_batch([vl_train[step * args.vl_batch + i] for i in range(args.vl_batch)])
        loss = vl_loss(policy.model, b)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % max(1, args.vl_steps // 4) == 0:
            curve_a.append({"step": step + 1, "loss": round(loss.item(), 4),
                            "accuracy": vqa_accuracy(policy, eval_batches, eval_kinds)["accuracy"]})
    before = vqa_accuracy(policy, eval_batches, eval_kinds)
    policy.model.eval()
    greedy = vl_generate(policy.model, policy.processor, eval_samples[: args.greedy_check], max_new_tokens=4)
    tf = vl_correct(policy.model, policy.processor.vl_batch(eval_samples[: args.greedy_check])).tolist()
    policy.model.train()
    result["phase_a"] = {"steps": args.vl_steps, "samples": args.vl_steps * args.vl_batch, "curve": curve_a,
                         "vqa": before, "seconds": round(time.time() - t0, 1),
                         "greedy_check": {"n": len(greedy),
                                          "greedy_exact_match": sum(g == s["answer"] for g, s in
                                                                    zip(greedy, eval_samples)) / max(1, len(greedy)),
                                          "agrees_with_metric": sum((g == s["answer"]) == c for g, s, c in
                                                                    zip(greedy, eval_samples, tf)) / max(1, len(greedy)),
                                          "examples": [[s["question"], s["answer"], g] for g, s in
                                                       zip(greedy[:4], eval_samples)]}}
    return result


def main(argv=None) -> dict:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    t_start = time.time()
    kinds = tuple(args.kinds.split(","))
    policy = XR0Policy.from_preset(args.preset, seed=args.seed)
    T = policy.config.chunk_len
    policy.robots = {"reach": reach_robot_spec(T)}
    policy.model.train()
    size, cams = policy.config.image_size, policy.config.cameras

    vl_train = SyntheticVQA(10**7, seed=VL_TRAIN_SEED, size=size, kinds=kinds)
    vl_eval = SyntheticVQA(args.eval_n, seed=VL_EVAL_SEED, size=size, kinds=kinds)
    eval_samples = [vl_eval[i] for i in range(len(vl_eval))]
    eval_kinds = [s["kind"] for s in eval_samples]
    eval_batches = [policy.processor.vl_batch(eval_samples[i:i + 100]) for i in range(0, len(eval_samples), 100)]
    robot_train = SyntheticReach(10**7, seed=ROBOT_TRAIN_SEED, cameras=cams, size=size, chunk_len=T)
    robot_eval = SyntheticReach(args.robot_eval_n, seed=ROBOT_EVAL_SEED, cameras=cams, size=size, chunk_len=T)
    robot_eval_batches = [policy.make_batch([robot_eval[i] for i in range(j, min(j + 16, len(robot_eval)))])
                          for j in range(0, len(robot_eval), 16)]
    result: dict = {"config": {k: v for k, v in vars(args).items() if k != "out"}, "kinds": list(kinds)}

    # ---------------------------------------------------------------- (a) VL skill (cached: it is the slow part)
    cache = pathlib.Path(args.skill_cache) if args.skill_cache else None
    if cache is not None and (cache / "skill.safetensors").is_file():
        load_model(policy.model, str(cache / "skill.safetensors"))
        cached = json.loads((cache / "skill.json").read_text())
        if cached["config"] != skill_config(args):
            raise SystemExit(f"{cache} holds a skill trained with {cached['config']}, not {skill_config(args)}")
        result.update(cached["result"])
    else:
        result.update(train_skill(policy, args, vl_train, eval_samples, eval_batches, eval_kinds))
        if cache is not None:
            cache.mkdir(parents=True, exist_ok=True)
            save_model(policy.model, str(cache / "skill.safetensors"))  # handles the tied embedding / lm_head
            (cache / "skill.json").write_text(json.dumps({"config": skill_config(args), "result": {
                k: result[k] for k in ("vqa_random_init", "phase_a")}}))
    before = result["phase_a"]["vqa"]
    snapshot = {k: v.detach().clone() for k, v in policy.model.state_dict().items()}

    # ---------------------------------------------------------------- (b) stage 1, without and with VL data
    arms = {}
    vl_offset = args.vl_steps * args.vl_batch  # co-training VL samples continue phase (a)'s stream: unseen ones
    for arm, vl_per_step in (("without_vl", 0), ("with_vl_1to6", args.cotrain_vl_batch)):
        t0 = time.time()
        policy.model.load_state_dict(snapshot)
        heads = ChoiceHeads.for_model(policy.model, seed=args.seed + 1)
        heads.train()
        get_recipe("stage1").configure(policy.model)  # what `xr0 train --recipe stage1` trains: the whole VLM
        text = [p for n, p in policy.model.vlm.named_parameters() if "visual" not in n and p.requires_grad]
        vis = [p for n, p in policy.model.vlm.named_parameters() if "visual" in n]
        for p in vis:
            p.requires_grad_(args.stage1_vit_lr_mult > 0)
        groups = [dict(params=text + list(heads.parameters()))]
        if args.stage1_vit_lr_mult > 0:
            groups.append(dict(params=vis, lr=args.stage1_lr * args.stage1_vit_lr_mult))
        opt = torch.optim.AdamW(groups, lr=args.stage1_lr, weight_decay=0.0)
        warmup = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, args.stage1_warmup)))
        curve, every = [], max(1, args.stage1_steps // max(1, args.curve_points))
        for step in tqdm(range(args.stage1_steps), desc=f"(b) stage 1 {arm}", unit="step"):
            rb = policy.make_batch([robot_train[step * args.robot_batch + i] for i in range(args.robot_batch)])
            vb = None
            if vl_per_step:
                start = vl_offset + step * vl_per_step
                vb = policy.processor.vl_batch([vl_train[start + i] for i in range(vl_per_step)])
            out = stage1_loss(policy.model, heads, rb, vb)
            opt.zero_grad(set_to_none=True)
            out["loss"].backward()
            opt.step()
            warmup.step()
            if (step + 1) % every == 0:
                curve.append({"step": step + 1, **{k: round(v.item(), 4) for k, v in out.items()},
                              "vqa_accuracy": vqa_accuracy(policy, eval_batches, eval_kinds)["accuracy"]})
        arms[arm] = {"vl_samples_per_step": vl_per_step, "robot_samples_per_step": args.robot_batch,
                     "vqa": vqa_accuracy(policy, eval_batches, eval_kinds),
                     "robot": robot_error(policy, heads, robot_eval_batches), "curve": curve,
                     "seconds": round(time.time() - t0, 1)}
    result["stage1"] = arms
    result["table"] = {"vqa_before_stage1": before["accuracy"],
                       "vqa_after_without_vl": arms["without_vl"]["vqa"]["accuracy"],
                       "vqa_after_with_vl_1to6": arms["with_vl_1to6"]["vqa"]["accuracy"],
                       "robot_chosen_l1_without_vl": arms["without_vl"]["robot"]["chosen_l1"],
                       "robot_chosen_l1_with_vl_1to6": arms["with_vl_1to6"]["robot"]["chosen_l1"],
                       "robot_stay_still_l1": arms["without_vl"]["robot"]["stay_still_l1"]}
    result["seconds_total"] = round(time.time() - t_start, 1)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return result


if __name__ == "__main__":
    main()
