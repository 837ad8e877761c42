"""Goldens for the Diffusion-DPO and SFT losses (tests/assets/golden/loss/).

The loss is the one of SalesforceAIResearch/DiffusionDPO `train.py` (per-sample MSE over C,H,W;
winner and loser share noise and timestep; inside = -beta/2 * (model_diff - ref_diff);
loss = -logsigmoid(inside).mean()), computed here with torch autograd so the Rust loss and its
gradient are checked against an implementation nobody here wrote by hand in Rust.

    /work/pyenv/bin/python tools/make_loss_goldens.py
"""
import json
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
from _common import save_tensors  # noqa: E402

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "assets", "golden", "loss")


def dpo(model_pred, ref_pred, target, beta):
    """train.py's loss, verbatim in formula: first half of the batch = preferred."""
    model_losses = (model_pred - target).pow(2).mean(dim=[1, 2, 3])
    mw, ml = model_losses.chunk(2)
    ref_losses = (ref_pred - target).pow(2).mean(dim=[1, 2, 3])
    rw, rl = ref_losses.chunk(2)
    inside = -0.5 * beta * ((mw - ml) - (rw - rl))
    loss = -F.logsigmoid(inside).mean()
    acc = (inside > 0).float().mean()
    return loss, acc, inside, model_losses, ref_losses


def main():
    os.makedirs(OUT, exist_ok=True)
    g = torch.Generator().manual_seed(7)
    n_pairs, shape = 6, (4, 4, 4)
    target_half = torch.randn(n_pairs, *shape, generator=g, dtype=torch.float64)
    target = target_half.repeat(2, 1, 1, 1)  # shared noise for winner and loser
    ref = target + 0.3 * torch.randn(2 * n_pairs, *shape, generator=g, dtype=torch.float64)
    model = ref + 1e-3 * torch.randn(2 * n_pairs, *shape, generator=g, dtype=torch.float64)
    # Inputs are rounded to float32 (what the Rust side holds) and the loss is computed in float64 on
    # them, as the Rust side does: the comparison then measures the formula, not input rounding
    # (beta = 5000 amplifies a 1e-8 MSE difference 2500-fold).
    target, ref, model = (t.float().double() for t in (target, ref, model))
    model.requires_grad_()
    cases, tensors = [], {"target": target, "ref_pred": ref, "model_pred": model.detach()}
    for beta in (5000.0, 500.0, 1.0):
        model.grad = None
        loss, acc, inside, ml, rl = dpo(model, ref, target, beta)
        loss.backward()
        key = f"beta{int(beta)}"
        tensors[f"{key}.grad"] = model.grad.detach().clone()
        tensors[f"{key}.inside"] = inside.detach()
        cases.append({"beta": beta, "key": key, "loss": loss.item(), "implicit_acc": acc.item(),
                      "model_mse": ml.mean().item(), "ref_mse": rl.mean().item()})
    # SFT: plain MSE on the preferred half only.
    model.grad = None
    sft = F.mse_loss(model[:n_pairs], target[:n_pairs])
    sft.backward()
    tensors["sft.grad"] = model.grad.detach().clone()
    # ln 2 at init: model == reference.
    init_loss, _, _, _, _ = dpo(ref, ref, target, 5000.0)
    # DESIGN.md's scalar golden from per-sample MSEs.
    mw, mlo = torch.tensor([0.1, 0.2], dtype=torch.float64), torch.tensor([0.1002, 0.1999], dtype=torch.float64)
    rw, rlo = torch.tensor([0.1001, 0.2001], dtype=torch.float64), torch.tensor([0.1002, 0.2], dtype=torch.float64)
    scalar = (-F.logsigmoid(-0.5 * 5000 * ((mw - mlo) - (rw - rlo)))).mean().item()
    meta = {"n_pairs": n_pairs, "shape": list(shape), "cases": cases, "sft_loss": sft.item(),
            "init_loss": init_loss.item(), "design_scalar": scalar}
    save_tensors(os.path.join(OUT, "dpo.safetensors"), tensors)
    with open(os.path.join(OUT, "dpo.json"), "w") as f:
        json.dump(meta, f, indent=1, sort_keys=True)
    print(json.dumps(meta, indent=1))


if __name__ == "__main__":
    main()
