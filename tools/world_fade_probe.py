"""Session 14's probe of a planted flaw (tools/world_dataset.py --faded): does a world model draw
faded objects, and does its VAE let it?

    P=/work/pyenv/bin/python
    $P tools/world_fade_probe.py contrast SAMPLES_DIR...          # `dpoimg world sample` folders or PNG folders
    $P tools/world_fade_probe.py refit-decoder --pipeline RUN/pipeline --data faded.npz --out DIR [--steps 1600]

`contrast`: per image, the object contrast: the background is the most common colour; every pixel
gets its coverage along the line from the background to each object palette colour (src/world's
RGB values; only where the pixel lies within 40 of that line), and the image's contrast is its
6th-largest coverage (robust to a few stray pixels). A render is 1.0; an object faded by f reads
1 − f. Prints the fraction below 0.8 ("low-contrast") and the median. On renders it flags 600 of 600
faded (f in 0.3–0.6) and 0 of 300 clean ones.

`refit-decoder`: fine-tunes only the VAE decoder (and post_quant_conv) of a diffusers pipeline on an
.npz (encoder frozen, so the latents the UNet learned keep their meaning; AdamW 5e-4, batch 32,
MSE + 0.5 L1 on posterior samples, seeded), prints the round-trip contrast of faded and clean
images before and after, and writes a copy of the pipeline with the new VAE for export_bundle.py.
Measured (logs/world_s14_pilots.json): the shipped VAE takes faded renders from contrast 0.55 to
0.86; 1,600 steps (256 s at 2 threads) bring that to 0.67, and the 9,900-step continuation then
draws 14 % low-contrast samples at guidance 1, 6.5 % at guidance 7.5.
"""
import argparse
import json
import os
import shutil
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from world_dataset import background_colour  # noqa: E402
from world_judges import load_png_u8  # noqa: E402

# src/world/scene.rs Color::rgb for the six object colours
PALETTE = np.array([[220, 30, 30], [40, 170, 40], [40, 70, 230], [240, 220, 40], [160, 40, 210],
                    [40, 210, 220]], float)
LOW = 0.8


def contrast(img):
    """Object contrast of one uint8 [H,W,3] image (see the module doc)."""
    bg = background_colour(img)
    d = img.reshape(-1, 3).astype(float) - bg
    best = np.zeros(len(d))
    for c in PALETTE:
        v = c - bg
        n2 = v @ v
        if n2 < 1e3:  # the background is this colour
            continue
        a = (d @ v) / n2
        on_line = np.linalg.norm(d - a[:, None] * v, axis=1) < 40
        best = np.maximum(best, np.where(on_line, a, 0))
    return np.sort(best)[-6]


def folder_contrast(folder):
    index = os.path.join(folder, "index.json")
    if os.path.exists(index):
        files = [e["file"] for e in json.load(open(index))["images"]]
    else:
        files = sorted(x for x in os.listdir(folder) if x.endswith(".png"))
    return np.array([contrast(load_png_u8(os.path.join(folder, f))) for f in files])


def cmd_contrast(args):
    for folder in args.folders:
        cs = folder_contrast(folder)
        print(f"{folder}: {len(cs)} images, low-contrast (< {LOW}) {np.mean(cs < LOW):.3f}, median {np.median(cs):.3f}")


def round_trip(vae, images, torch):
    with torch.no_grad():
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
        r = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
        r = ((r + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    return float(np.mean([contrast(im) for im in r]))


def cmd_refit(args):
    import torch
    import torch.nn.functional as F
    from diffusers import AutoencoderKL
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    d = np.load(args.data)
    if "fade" not in d:
        sys.exit(f"{args.data} has no `fade` array; make it with tools/world_dataset.py --faded")
    images, fade = d["images"], d["fade"]
    faded, clean = images[np.flatnonzero(fade > 0)[:64]], images[np.flatnonzero(fade == 0)[:64]]
    vae = AutoencoderKL.from_pretrained(os.path.join(args.pipeline, "vae")).eval()
    print(f"before: round-trip contrast faded {round_trip(vae, faded, torch):.3f} (input "
          f"{np.mean([contrast(i) for i in faded]):.3f}), clean {round_trip(vae, clean, torch):.3f}", flush=True)
    for p in vae.parameters():
        p.requires_grad_(False)
    trained = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    for p in trained:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(trained, lr=args.lr, weight_decay=0.0)
    data = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    g = torch.Generator().manual_seed(args.seed)
    t0, losses = time.time(), []
    vae.train()
    for step in range(args.steps):
        x = data[torch.randint(0, len(data), (32,), generator=g)].float() / 127.5 - 1
        with torch.no_grad():
            post = vae.encode(x).latent_dist
            z = post.mean + post.std * torch.randn(post.mean.shape, generator=g)
        rec = vae.decode(z).sample
        loss = F.mse_loss(rec, x) + 0.5 * F.l1_loss(rec, x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if (step + 1) % 200 == 0:
            print(f"step {step + 1} loss {np.mean(losses[-200:]):.5f} {time.time() - t0:.0f} s", flush=True)
    vae.eval()
    print(f"after {args.steps} steps ({time.time() - t0:.0f} s): round-trip contrast faded "
          f"{round_trip(vae, faded, torch):.3f}, clean {round_trip(vae, clean, torch):.3f}")
    if os.path.exists(args.out):
        sys.exit(f"{args.out} exists; remove it first")
    shutil.copytree(args.pipeline, args.out)
    vae.save_pretrained(os.path.join(args.out, "vae"))
    print(f"wrote {args.out} (the pipeline with the refitted VAE decoder)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("contrast")
    p.add_argument("folders", nargs="+")
    p = sub.add_parser("refit-decoder")
    p.add_argument("--pipeline", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=1600)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    cmd_contrast(args) if args.cmd == "contrast" else cmd_refit(args)


if __name__ == "__main__":
    main()
