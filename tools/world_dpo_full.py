#!/usr/bin/env python3
"""Diffusion-DPO on every weight of a world bundle's UNet, in torch: the diagnostic arm that tells
whether the LoRA restriction or the amount of data limits the shipped DPO demo.

    /work/pyenv/bin/python tools/world_dpo_full.py --bundle models/world --data models/world-prefs \
        --out /tmp/world-dpo-full --minutes 20 --threads 2 --lr 2e-5
    dpoimg eval --bundle /tmp/world-dpo-full --arm base ...   # the tuned model is a whole bundle

Why: `dpoimg-finetune dpo` trains LoRA on linear layers only (attention, and feed-forward with a
re-exported graph), and no such adapter moved held-out prompts (README, sessions 10-12), while
plain continued training of all weights improves the same base quickly (session 9). This runs the
same Diffusion-DPO step as the Rust trainer (src/finetune/trainer.rs: pairs of the ImageRewardDB
layout, lower rank preferred, ties skipped; posterior-mean latents times the VAE scaling factor;
one uniform timestep and one noise draw per pair, shared by both images; the bundle's own
prediction target; loss -log sigmoid(-beta/2 ((m_w - m_l) - (r_w - r_l))) on per-sample MSEs; the
frozen base as reference; gradient clipping 1.0; AdamW) but updates all UNet weights (`--params
all`), or only the 3x3/1x1 convolutions (`--params conv`), so the result can be compared with the
LoRA runs at equal compute. The tuned UNet is written as a complete bundle (the other graphs copied,
unet.onnx exported again and checked against torch by tools/bundle_lora_targets.py), which
`dpoimg eval` samples as its base arm; pair it with an eval of the original bundle on the same
prompts and seeds.
"""
import argparse
import copy
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402,F401  (offline mode before any Hugging Face import)

import numpy as np  # noqa: E402
import torch  # noqa: E402


def read_pairs(data_dir, split):
    """(prompt, chosen path, rejected path) for every untied pair of the split, as the Rust loader
    (src/data/imagereward.rs) builds them from world_judges.read_db's prompt groups: lower rank
    preferred, ties skipped."""
    from world_judges import read_db
    pairs, ties = [], 0
    for items in read_db(data_dir, split):
        for a, first in enumerate(items):
            for second in items[a + 1:]:
                if first["rank"] == second["rank"]:
                    ties += 1
                    continue
                w, l = (first, second) if first["rank"] < second["rank"] else (second, first)
                pairs.append((w["prompt"], w["path"], l["path"]))
    return pairs, ties


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--data", required=True, help="ImageRewardDB-layout directory (metadata-train.parquet)")
    ap.add_argument("--out", required=True, help="the tuned bundle's directory")
    ap.add_argument("--split", default="train")
    ap.add_argument("--params", choices=("all", "conv", "attn"), default="all",
                    help="which UNet weights train: all, only convolutions, or only the attention projections")
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--weight-decay", type=float, default=0.0)
    ap.add_argument("--beta", type=float, default=5000.0)
    ap.add_argument("--batch", type=int, default=16, help="pairs per step")
    ap.add_argument("--steps", type=int, default=0, help="stop after this many steps (0: --minutes)")
    ap.add_argument("--minutes", type=float, default=20.0, help="training wall time when --steps is 0")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--log", help="JSON lines of per-window metrics (default OUT.log.jsonl)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from safetensors.torch import save_file
    import bundle_lora_targets
    import bundle_weights
    import train_world_model as twm
    from _common import sha256_file, write_json
    from world_judges import load_png_u8

    with open(os.path.join(args.bundle, "bundle.json"), encoding="utf-8") as f:
        bundle = json.load(f)
    with tempfile.TemporaryDirectory() as tmp:
        tok = twm.write_tokenizer(tmp)
    vae, unet, te = AutoencoderKL(**twm.VAE_KW), UNet2DConditionModel(**twm.UNET_KW), twm.text_encoder(tok)
    worst = bundle_weights.load_bundle(args.bundle, unet, te, vae, twm.MAX_LENGTH)
    print(f"{args.bundle} read back, max |onnx - torch| {worst}", flush=True)
    sc = bundle["scheduler"]
    sched = DDPMScheduler(num_train_timesteps=sc.get("num_train_timesteps", 1000), beta_start=sc["beta_start"],
                          beta_end=sc["beta_end"], beta_schedule=sc["beta_schedule"],
                          prediction_type=sc["prediction_type"])
    v_pred = sched.config.prediction_type == "v_prediction"
    sf = bundle["vae"]["scaling_factor"]

    pairs, ties = read_pairs(args.data, args.split)
    print(f"{len(pairs)} pairs ({ties} tied skipped) from {args.data} {args.split}", flush=True)
    files = sorted({p for _, w, l in pairs for p in (w, l)})
    texts = sorted({t for t, _, _ in pairs} | {""})
    with torch.no_grad():
        px = torch.stack([torch.from_numpy(load_png_u8(p).astype(np.float32))
                          for p in files]).permute(0, 3, 1, 2) / 127.5 - 1
        lat = torch.cat([vae.encode(px[i:i + 256]).latent_dist.mean for i in range(0, len(px), 256)]) * sf
        ids = tok(texts, padding="max_length", max_length=twm.MAX_LENGTH, truncation=True,
                  return_tensors="pt").input_ids
        emb = te(ids)[0]
    fi = {p: i for i, p in enumerate(files)}
    ti = {t: i for i, t in enumerate(texts)}
    W = torch.tensor([fi[w] for _, w, _ in pairs])
    L = torch.tensor([fi[l] for _, _, l in pairs])
    T = torch.tensor([ti[t] for t, _, _ in pairs])

    ref = copy.deepcopy(unet).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    unet.train()
    named = list(unet.named_parameters())
    if args.params == "conv":
        train = [p for n, p in named if p.dim() == 4]
    elif args.params == "attn":
        train = [p for n, p in named if any(f".{k}." in n for k in ("to_q", "to_k", "to_v", "to_out"))]
    else:
        train = [p for _, p in named]
    keep = {id(p) for p in train}
    for _, p in named:
        p.requires_grad_(id(p) in keep)
    total = sum(p.numel() for _, p in named)
    n_train = sum(p.numel() for p in train)
    print(f"training {n_train} of {total} UNet parameters ({n_train / total:.1%}, --params {args.params})", flush=True)
    opt = torch.optim.AdamW(train, lr=args.lr, weight_decay=args.weight_decay)

    rng = np.random.default_rng(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    order, pos = rng.permutation(len(pairs)), 0
    log_path = args.log or args.out.rstrip("/") + ".log.jsonl"
    log = open(log_path, "w")
    t0, step, win = time.time(), 0, []
    while True:
        if (args.steps and step >= args.steps) or (not args.steps and time.time() - t0 > args.minutes * 60):
            break
        if pos + args.batch > len(order):
            order, pos = rng.permutation(len(pairs)), 0
        b = torch.from_numpy(order[pos:pos + args.batch])
        pos += args.batch
        n = len(b)
        x0 = torch.cat([lat[W[b]], lat[L[b]]])
        noise = torch.randn(lat[W[b]].shape, generator=g).repeat(2, 1, 1, 1)
        t = torch.randint(0, sched.config.num_train_timesteps, (n,), generator=g).repeat(2)
        c = emb[T[b]].repeat(2, 1, 1)
        xt = sched.add_noise(x0, noise, t)
        target = sched.get_velocity(x0, noise, t) if v_pred else noise
        with torch.no_grad():
            r = ((ref(xt, t, c).sample - target) ** 2).mean(dim=(1, 2, 3))
        m = ((unet(xt, t, c).sample - target) ** 2).mean(dim=(1, 2, 3))
        inside = -0.5 * args.beta * ((m[:n] - m[n:]) - (r[:n] - r[n:]))
        loss = -torch.nn.functional.logsigmoid(inside).mean()
        opt.zero_grad()
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(train, 1.0)
        opt.step()
        step += 1
        win.append((loss.item(), (inside > 0).float().mean().item(), gn.item()))
        if step % 50 == 0:
            a = np.array(win)
            rec = dict(step=step, seconds=round(time.time() - t0, 1), loss=a[:, 0].mean(), implicit_acc=a[:, 1].mean(),
                       grad_norm=a[:, 2].mean())
            log.write(json.dumps(rec) + "\n")
            log.flush()
            print(rec, flush=True)
            win = []
    seconds = time.time() - t0
    print(f"{step} steps x {args.batch} pairs in {seconds:.0f} s", flush=True)

    # the tuned UNet as a whole bundle: a copy of the source with the new weights, re-exported
    unet.eval()
    with tempfile.TemporaryDirectory() as stage:
        for f in bundle["files"]:
            os.makedirs(os.path.dirname(os.path.join(stage, f)) or stage, exist_ok=True)
            shutil.copyfile(os.path.join(args.bundle, f), os.path.join(stage, f))
        wname = bundle["unet"]["weights"]
        save_file({k: v.detach().contiguous() for k, v in unet.state_dict().items()}, os.path.join(stage, wname))
        staged = dict(bundle, files={**bundle["files"], wname: sha256_file(os.path.join(stage, wname))})
        write_json(os.path.join(stage, "bundle.json"), staged, indent=2)
        bundle_lora_targets.main([stage, args.out, "--lora-targets", ",".join(bundle["unet"]["lora"]["targets"]),
                                  "--name", f"{bundle['name']}-dpo-{args.params}", "--threads", str(args.threads)])
    with open(os.path.join(args.out, "dpo_full.json"), "w") as f:
        json.dump(dict(vars(args), steps_done=step, train_seconds=round(seconds, 1), pairs=len(pairs),
                       trained_params=n_train, unet_params=total), f, indent=1)
    print(f"wrote {args.out}", flush=True)


if __name__ == "__main__":
    main()
