"""Golden for the VAE encoder path of the trainer's encode-once step (tests/assets/golden/vae_encode.safetensors).

Encodes two fixed images ([-1, 1], NCHW) with the tiny pipeline's torch AutoencoderKL (built by
make_test_assets.py in the scratch folder) and records the latent distribution's mean and logvar, the
scaled mean latents, and one seeded sample (`latent_dist.sample(generator)` draws torch.randn with the
generator, so the Rust side's TorchRng must reproduce it).

    /work/pyenv/bin/python tools/make_encoder_golden.py [--scratch /work/scratch]
"""
import argparse
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch

sys.path.insert(0, os.path.dirname(__file__))
from _common import save_tensors  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--scratch", default="/work/scratch")
    args = ap.parse_args()
    from diffusers import AutoencoderKL
    vae = AutoencoderKL.from_pretrained(os.path.join(args.scratch, "tiny-sd", "vae")).eval()
    g = torch.Generator().manual_seed(5)
    pixels = torch.rand(2, 3, 16, 20, generator=g) * 2 - 1
    with torch.no_grad():
        dist = vae.encode(pixels).latent_dist
        sample = dist.sample(generator=torch.Generator().manual_seed(11))
    sf = vae.config.scaling_factor
    out = os.path.join(os.path.dirname(__file__), "..", "tests", "assets", "golden", "vae_encode.safetensors")
    save_tensors(out, {"pixels": pixels, "mean": dist.mean, "logvar": dist.logvar,
                       "latents_mean_scaled": dist.mean * sf, "latents_sample_seed11_scaled": sample * sf})
    print("wrote", out, "scaling", sf, "mean range", float(dist.mean.min()), float(dist.mean.max()))


if __name__ == "__main__":
    main()
