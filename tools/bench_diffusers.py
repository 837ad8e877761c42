"""Time diffusers' StableDiffusionPipeline on the CPU: the baseline dpoimg's own benchmark is compared with.

Usage:
    python tools/bench_diffusers.py --diffusers DIR [--prompt P] [--steps N] [--size S] [--sampler ddim]
        [--runs R] [--threads T] [--guidance G]

Loads the local diffusers folder DIR (nothing is downloaded), pins torch to T intra-op threads, does one
warm-up generation (first-call allocations and kernel selection would otherwise skew run 1), then times R
generations of one S x S image with fixed latents and prints one JSON line:
    {"impl": "diffusers", "per_image_s": ..., "runs": R, ...}
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402  (offline mode before any Hugging Face import)
from _common import SAMPLERS, make_scheduler, seeded_randn  # noqa: E402

import torch  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--diffusers", required=True, help="local diffusers StableDiffusionPipeline folder")
    ap.add_argument("--prompt", default="a photo of a cat")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--size", type=int, default=None, help="image width = height (default: vae sample_size)")
    ap.add_argument("--sampler", default="ddim", choices=sorted(SAMPLERS))
    ap.add_argument("--guidance", type=float, default=7.5)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    a = ap.parse_args(argv)

    from diffusers import StableDiffusionPipeline
    torch.set_num_threads(a.threads)
    pipe = StableDiffusionPipeline.from_pretrained(a.diffusers, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    if a.sampler != "ddim" or type(pipe.scheduler).__name__ != "DDIMScheduler":
        pipe.scheduler, _ = make_scheduler(a.sampler, pipe.scheduler.config)
    size = a.size or pipe.vae.config.sample_size
    f = pipe.vae_scale_factor
    latents = seeded_randn([1, pipe.unet.config.in_channels, size // f, size // f], 0)

    def generate():
        with torch.no_grad():
            pipe(a.prompt, num_inference_steps=a.steps, guidance_scale=a.guidance, height=size, width=size,
                 latents=latents.clone(), output_type="np")

    t0 = time.perf_counter()
    generate()
    warmup = time.perf_counter() - t0
    times = []
    for _ in range(a.runs):
        t0 = time.perf_counter()
        generate()
        times.append(time.perf_counter() - t0)
    print(json.dumps({"impl": "diffusers", "per_image_s": sum(times) / len(times), "runs": a.runs,
                      "min_s": min(times), "warmup_s": warmup, "steps": a.steps, "size": size,
                      "sampler": a.sampler, "guidance": a.guidance, "threads": a.threads,
                      "torch": torch.__version__}))


if __name__ == "__main__":
    main()
