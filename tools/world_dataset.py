"""Render the world model's training set with the product's own renderer (`dpoimg world`).

Usage:
    python tools/world_dataset.py OUT.npz [--prompts 10000] [--per-prompt 5] [--seed 1000]
        [--dpoimg target/debug/dpoimg] [--workdir /dev/shm/dpoimg-world-render]

Why the Rust binary and not a Python re-implementation: training data, the attribute checker and
the annotators must describe exactly one world, so `dpoimg world prompts` picks the prompts (train
split only: validation and test prompts stay unseen by the base model) and `dpoimg world render`
draws them (its layout sampling fills in the size/position/background a prompt leaves open). The
PNGs are rendered into a tmpfs work folder (the renderer fsyncs every file; on a disk that costs
~10 ms per image) and packed into one .npz: `images` uint8 [N,32,32,3], `prompts` [N] (str),
`seeds` [N] (the renderer seed of each image). Deterministic: the same arguments give the same
arrays.
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


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--prompts", type=int, default=10000, help="distinct train-split prompts")
    ap.add_argument("--per-prompt", type=int, default=5, help="renders (layouts) per prompt")
    ap.add_argument("--seed", type=int, default=1000, help="renderer seed (prompt sampling uses seed 0)")
    ap.add_argument("--dpoimg", default="target/debug/dpoimg")
    ap.add_argument("--workdir", default="/dev/shm/dpoimg-world-render")
    args = ap.parse_args()
    if not os.path.exists(args.dpoimg):
        sys.exit(f"{args.dpoimg} does not exist. Fix: run `cargo build --bin dpoimg` (or pass --dpoimg PATH)")
    t0 = time.time()
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
    n = len(index)
    images = np.zeros((n, 32, 32, 3), np.uint8)
    for i, e in enumerate(index):
        images[i] = np.asarray(Image.open(os.path.join(render_dir, e["file"])).convert("RGB"))
    assert all(e["split"] == "train" for e in index)
    np.savez(args.out, images=images, prompts=np.array([e["prompt"] for e in index]),
             seeds=np.array([e["seed"] for e in index], np.int64))
    shutil.rmtree(args.workdir)
    print(f"{n} images of {len(prompts)} prompts -> {args.out} in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
