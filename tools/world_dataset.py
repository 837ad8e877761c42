"""Render the world model's training set with the product's own renderer (`dpoimg world`).

Usage:
    python tools/world_dataset.py OUT.npz [--prompts 10000] [--per-prompt 5] [--seed 1000]
        [--dpoimg target/debug/dpoimg] [--workdir /dev/shm/dpoimg-world-render]
        [--faded 0.3 --fade 0.3 0.6 --fade-seed 7] [--input RENDERED.npz]

Why the Rust binary and not a Python re-implementation: training data, the attribute checker and
the annotators must describe exactly one world, so `dpoimg world prompts` picks the prompts (train
split only: validation and test prompts stay unseen by the base model) and `dpoimg world render`
draws them (its layout sampling fills in the size/position/background a prompt leaves open). The
PNGs are rendered into a tmpfs work folder (the renderer fsyncs every file; on a disk that costs
~10 ms per image) and packed into one .npz: `images` uint8 [N,32,32,3], `prompts` [N] (str),
`seeds` [N] (the renderer seed of each image). Deterministic: the same arguments give the same
arrays.

`--faded FRAC` plants a prompt-independent defect, the miniature's stand-in for the low-quality
images of a web-scraped set (faded scans, washed-out photos; their captions never say so): a seeded
FRAC of the images have their objects faded toward the background, pixel = bg + (1 - f)(pixel - bg)
with f uniform in `--fade LO HI` (bg: the image's most common colour, which a render's background
always is). The intent: a base that draws faded objects at some rate whatever the prompt says has
prompt-independent errors (the attribute checker misreads faded objects: its soft masks see them as
smaller and rounder, and past f = 0.5 not at all) that preference data shares across prompts, as
the aesthetic flaws that Diffusion-DPO's SD-1.5 run fixed were. Measured in session 14
(logs/world_s14_pilots.json): continuing the shipped base on a 30 %-faded set (1,200 and 3,600
steps) did not make it draw faded objects at the bundle's settings: its VAE, trained on clean
renders, decodes faded latents back to vivid colours, and guidance 7.5 suppresses most of the
faded samples that a refitted decoder shows at guidance 1 (tools/world_fade_probe.py). `fade`
[N] records each image's f (0 = untouched). `--input` applies it to an already rendered .npz
instead of rendering again (the same arrays either way).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
from PIL import Image


def background_colour(img):
    """The most common RGB value of a uint8 [H,W,3] image (a render's background), as float64 [3]."""
    colours, counts = np.unique(img.reshape(-1, 3), axis=0, return_counts=True)
    return colours[counts.argmax()].astype(np.float64)


def fade_images(images, frac, lo, hi, seed):
    """Fade a seeded `frac` of `images` (uint8 [N,H,W,3], modified copy returned) toward each
    image's background colour by f ~ U(lo, hi); returns (images, f per image, 0 where untouched)."""
    rng = np.random.default_rng(seed)
    n = len(images)
    chosen = rng.random(n) < frac
    f = np.where(chosen, rng.uniform(lo, hi, n), 0.0)
    out = images.copy()
    for i in np.flatnonzero(chosen):
        bg = background_colour(images[i])
        faded = bg + (1.0 - f[i]) * (images[i].astype(np.float64) - bg)
        out[i] = np.clip(np.rint(faded), 0, 255).astype(np.uint8)
    return out, f


def render(args):
    """The training renders: (images uint8 [N,32,32,3], prompts [N] str, seeds [N] int64)."""
    if not os.path.exists(args.dpoimg):
        sys.exit(f"{args.dpoimg} does not exist. Fix: run `cargo build --bin dpoimg` (or pass --dpoimg PATH)")
    if os.path.exists(args.workdir):
        shutil.rmtree(args.workdir)
    os.makedirs(args.workdir)
    prompts = subprocess.run([args.dpoimg, "world", "prompts", "--count", str(args.prompts), "--split", "train",
                              "--seed", "0"], check=True, capture_output=True, text=True).stdout.splitlines()
    assert len(prompts) == args.prompts, len(prompts)
    pfile = os.path.join(args.workdir, "prompts.txt")
    with open(pfile, "w") as f:
        f.write("\n".join(prompts) + "\n")
    render_dir = os.path.join(args.workdir, "render")
    subprocess.run([args.dpoimg, "world", "render", "--prompts", pfile, "--per-prompt", str(args.per_prompt),
                    "--seed", str(args.seed), "-o", render_dir], check=True, capture_output=True)
    index = json.load(open(os.path.join(render_dir, "index.json")))["images"]
    images = np.zeros((len(index), 32, 32, 3), np.uint8)
    for i, e in enumerate(index):
        images[i] = np.asarray(Image.open(os.path.join(render_dir, e["file"])).convert("RGB"))
    assert all(e["split"] == "train" for e in index)
    shutil.rmtree(args.workdir)
    return images, np.array([e["prompt"] for e in index]), np.array([e["seed"] for e in index], np.int64)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--prompts", type=int, default=10000, help="distinct train-split prompts")
    ap.add_argument("--per-prompt", type=int, default=5, help="renders (layouts) per prompt")
    ap.add_argument("--seed", type=int, default=1000, help="renderer seed (prompt sampling uses seed 0)")
    ap.add_argument("--dpoimg", default="target/debug/dpoimg")
    ap.add_argument("--workdir", default="/dev/shm/dpoimg-world-render")
    ap.add_argument("--faded", type=float, default=0.0, help="fraction of images with faded objects (see above)")
    ap.add_argument("--fade", type=float, nargs=2, default=(0.3, 0.6), metavar=("LO", "HI"),
                    help="fade strength range, f = 0 untouched, 1 object gone")
    ap.add_argument("--fade-seed", type=int, default=7)
    ap.add_argument("--input", default="", help="an .npz this script rendered before: fade it instead of rendering")
    args = ap.parse_args()
    if not 0.0 <= args.faded <= 1.0 or not 0.0 <= args.fade[0] <= args.fade[1] <= 1.0:
        sys.exit(f"--faded {args.faded} --fade {args.fade}: need 0 <= FRAC <= 1 and 0 <= LO <= HI <= 1")
    t0 = time.time()
    if args.input:
        d = np.load(args.input)
        if "fade" in d and d["fade"].any():
            sys.exit(f"--input {args.input} is already faded; pass the unfaded render")
        images, prompts, seeds = d["images"], d["prompts"], d["seeds"]
    else:
        images, prompts, seeds = render(args)
    images, f = fade_images(images, args.faded, args.fade[0], args.fade[1], args.fade_seed)
    np.savez(args.out, images=images, prompts=prompts, seeds=seeds, fade=f)
    print(f"{len(images)} images of {len(set(prompts))} prompts ({(f > 0).sum()} faded) -> {args.out} "
          f"in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
