"""Does a world pipeline place objects from the text or from the signal its noise schedule leaves in
x_T? (torch + diffusers; the README's "noise-schedule leak" numbers.)

    python tools/world_leak_probe.py --pipeline RUN/pipeline --out leak.json [--n 120] [--guidance 7.5]

For n single-object test prompts with a position phrase (position A), each is rendered by
`dpoimg world render`, encoded by the pipeline's VAE (posterior mean x scaling_factor) into z0, and
mixed into the starting latent the way training sees its first sampling timestep t0:
x_t0 = sqrt(abar_t0)·z0 + sqrt(1 − abar_t0)·eps. The pipeline then samples (DDIM, its own schedule
and spacing) with the same prompt moved to another position B (drawn uniformly from the other 8).
`dpoimg world check` reads where the single object landed. Arms: `noise` (x_t0 = eps, ordinary
sampling) and `leak` (as above). A model that places from the text puts the object at B in both;
one that reads placement from x_T puts it at A under `leak` far above the 1/9 chance. Same eps per
image in both arms (torch seed 0).
"""
import argparse
import json
import os
import random
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402,F401  (offline mode before any Hugging Face import)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from scipy.stats import binomtest  # noqa: E402

from world_eval import check  # noqa: E402
from world_position_probe import POSITION, requested  # noqa: E402

PLACES = ["top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right"]
RELATIONS = (" left of ", " right of ", " above ", " below ")


def phrase(place):
    return "in the center" if place == "center" else f"at the {place}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pipeline", required=True, help="diffusers StableDiffusionPipeline folder")
    ap.add_argument("--n", type=int, default=120, help="single-object prompts with a position phrase")
    ap.add_argument("--guidance", type=float, default=7.5)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dpoimg", default="target/release/dpoimg")
    ap.add_argument("--keep", default=None, help="keep the images here")
    ap.add_argument("--out", default=None, help="result JSON (default: stdout)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    work = args.keep or tempfile.mkdtemp(prefix="world-leak-")
    os.makedirs(work, exist_ok=True)

    rng = random.Random(0)
    candidates = subprocess.run([args.dpoimg, "world", "prompts", "--count", str(8 * args.n), "--split", "test",
                                 "--seed", "0"], check=True, capture_output=True, text=True).stdout.splitlines()
    at_a, at_b, place_a, place_b = [], [], [], []
    for p in candidates:
        want = requested(p)
        if want is None or any(r in p for r in RELATIONS):
            continue
        other = rng.choice([q for q in PLACES if q != want])
        at_a.append(p)
        at_b.append(POSITION.sub(phrase(other), p, count=1))
        place_a.append(want)
        place_b.append(other)
        if len(at_a) == args.n:
            break
    if len(at_a) < args.n:
        sys.exit(f"only {len(at_a)} single-object position prompts among {len(candidates)} test prompts")
    pfile = os.path.join(work, "prompts-a.txt")
    with open(pfile, "w") as f:
        f.write("\n".join(at_a) + "\n")
    subprocess.run([args.dpoimg, "world", "render", "--prompts", pfile, "--seed", "5", "-o", os.path.join(work, "a")],
                   check=True, capture_output=True)

    from diffusers import StableDiffusionPipeline
    pipe = StableDiffusionPipeline.from_pretrained(args.pipeline, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    x = torch.stack([torch.from_numpy(np.asarray(Image.open(os.path.join(work, "a", f"{i:05}-0.png"))
                                                 .convert("RGB")).copy()) for i in range(args.n)])
    x = x.permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        z0 = pipe.vae.encode(x).latent_dist.mean * pipe.vae.config.scaling_factor
    pipe.scheduler.set_timesteps(args.steps)
    t0 = int(pipe.scheduler.timesteps[0])
    keep = float(pipe.scheduler.alphas_cumprod[t0].sqrt())
    eps = torch.randn(z0.shape, generator=torch.Generator().manual_seed(0))
    result = {"pipeline": os.path.abspath(args.pipeline), "prompts": args.n, "guidance": args.guidance,
              "steps": args.steps, "first_timestep": t0, "sqrt_abar_first": round(keep, 5), "arms": {}}
    for arm, start in (("noise", eps), ("leak", keep * z0 + (1 - keep ** 2) ** 0.5 * eps)):
        folder = os.path.join(work, arm)
        os.makedirs(folder, exist_ok=True)
        images = pipe(at_b, height=32, width=32, num_inference_steps=args.steps, guidance_scale=args.guidance,
                      latents=start.clone(), output_type="np").images
        for i, im in enumerate(images):
            Image.fromarray((im * 255).round().clip(0, 255).astype(np.uint8)).save(os.path.join(folder, f"{i:05}.png"))
        single = [(r["reading"]["objects"][0]["position"], a, b)
                  for r, a, b in zip(check(args.dpoimg, folder, [f"{i:05}.png" for i in range(args.n)], at_b)[1],
                                     place_a, place_b)
                  if len(r["reading"].get("objects", [])) == 1]
        n = len(single)
        hits_a = sum(d == a for d, a, _ in single)
        hits_b = sum(d == b for d, _, b in single)
        # one-sided exact binomial tests against placing uniformly over the 9 cells
        result["arms"][arm] = {"single_object_images": n,
                               "at_leaked_position_a": round(hits_a / max(n, 1), 4),
                               "p_a_above_chance": float(binomtest(hits_a, n, 1 / 9, "greater").pvalue),
                               "at_prompted_position_b": round(hits_b / max(n, 1), 4),
                               "p_b_above_chance": float(binomtest(hits_b, n, 1 / 9, "greater").pvalue)}
        print(arm, result["arms"][arm], file=sys.stderr, flush=True)
    text = json.dumps(result, indent=1) + "\n"
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
