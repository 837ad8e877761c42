"""Goldens for the trainer's optimiser (tests/assets/golden/optim.safetensors + optim.json).

torch.optim.AdamW (the Diffusion-DPO SD-1.5 optimiser: betas 0.9/0.999, eps 1e-8, weight decay 1e-2),
torch.nn.utils.clip_grad_norm_ (max norm 1.0) and diffusers' learning-rate schedules
(constant, constant_with_warmup, cosine with warmup) for a few steps on fixed gradients.

    /work/pyenv/bin/python tools/make_optim_goldens.py
"""
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _common import save_tensors  # noqa: E402

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "assets", "golden")


def main():
    from diffusers.optimization import get_scheduler
    g = torch.Generator().manual_seed(3)
    p0 = [torch.randn(4, 6, generator=g), torch.randn(5, 4, generator=g)]
    grads = [[torch.randn_like(p, memory_format=torch.contiguous_format).normal_(generator=g) * s for p in p0]
             for s in (0.5, 3.0, 0.1, 2.0, 0.7)]
    tensors = {f"p0.{i}": p for i, p in enumerate(p0)}
    for k, gs in enumerate(grads):
        for i, gr in enumerate(gs):
            tensors[f"grad.{k}.{i}"] = gr
    meta = {"steps": len(grads), "lr": 1e-2, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 1e-2,
            "max_grad_norm": 1.0, "schedules": {}}
    for sched_name, warmup in (("constant", 0), ("constant_with_warmup", 2), ("cosine", 2)):
        params = [torch.nn.Parameter(p.clone()) for p in p0]
        opt = torch.optim.AdamW(params, lr=meta["lr"], betas=tuple(meta["betas"]), eps=meta["eps"],
                                weight_decay=meta["weight_decay"])
        sched = get_scheduler(sched_name, optimizer=opt, num_warmup_steps=warmup, num_training_steps=len(grads))
        lrs, norms = [], []
        for k, gs in enumerate(grads):
            for p, gr in zip(params, gs):
                p.grad = gr.clone()
            norms.append(float(torch.nn.utils.clip_grad_norm_(params, meta["max_grad_norm"])))
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
            opt.zero_grad()
        for i, p in enumerate(params):
            tensors[f"{sched_name}.final.{i}"] = p.detach()
        meta["schedules"][sched_name] = {"warmup": warmup, "lrs": lrs, "grad_norms": norms}
    save_tensors(os.path.join(OUT, "optim.safetensors"), tensors)
    with open(os.path.join(OUT, "optim.json"), "w") as f:
        json.dump(meta, f, indent=1, sort_keys=True)
    print(json.dumps(meta, indent=1))


if __name__ == "__main__":
    main()
