"""One-run benchmark of a Diffusion-DPO LoRA training step: dpoimg-finetune vs torch + peft.

Usage (after `cargo build --release --bin dpoimg-finetune`):
    /work/pyenv/bin/python tools/bench_finetune.py [--bundle tests/assets/tiny-bundle]
        [--data tests/assets/train/prefs.jsonl] [--batch 4] [--threads 2] [--steps 40]

Both sides train the same UNet (the bundle's unet.safetensors + unet_config.json, loaded into
diffusers' UNet2DConditionModel for torch) with the same LoRA (rank 4, alpha 4, gaussian init,
to_q/to_k/to_v/to_out.0), the same batch of preference pairs (preferred + rejected = 2 x batch
samples), the reference = the same UNet with the adapter disabled (as diffusers' LoRA DPO script),
AdamW and clipping at 1.0, pinned to the same thread count. The torch side gets random latents and
text states of the bundle's shapes (what its loop sees after encoding; dpoimg reads them from its
encode-once cache, warmed before timing). Reported: median step time after a warm-up, and the peak
resident set size of each whole process (ru_maxrss: the trainer process for dpoimg, this Python
process for torch, measured in a fresh subprocess so neither pays for the other).
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def torch_side(args):
    """Runs in a subprocess: prints one JSON line."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import _common  # noqa: F401  (offline mode)
    import torch
    import torch.nn.functional as F
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig
    from safetensors.torch import load_file

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = json.load(open(os.path.join(args.bundle, "unet_config.json")))
    unet = UNet2DConditionModel.from_config(cfg)
    unet.load_state_dict(load_file(os.path.join(args.bundle, "unet.safetensors")))
    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    params = [p for p in unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    bundle = json.load(open(os.path.join(args.bundle, "bundle.json")))
    f = bundle["vae"]["downsample_factor"]
    c = bundle["vae"]["latent_channels"]
    h = bundle["defaults"]["height"] // f
    w = bundle["defaults"]["width"] // f
    n = args.batch
    L, D = bundle["text_encoder"]["max_length"], bundle["unet"]["cross_attention_dim"]
    beta = 2000.0
    times = []
    for step in range(args.steps):
        t0 = time.perf_counter()
        latents = torch.randn(2 * n, c, h, w)
        ehs = torch.randn(n, L, D).repeat(2, 1, 1)
        noise = torch.randn(n, c, h, w).repeat(2, 1, 1, 1)
        t = torch.randint(0, 1000, (n,)).repeat(2)
        ac = 0.5  # the exact schedule does not change the cost
        noisy = latents * ac ** 0.5 + noise * (1 - ac) ** 0.5
        pred = unet(noisy, t, ehs).sample
        mse = (pred.float() - noise.float()).pow(2).mean(dim=[1, 2, 3])
        mw, ml = mse.chunk(2)
        with torch.no_grad():
            unet.disable_adapters()
            ref = unet(noisy, t, ehs).sample
            unet.enable_adapters()
            rmse = (ref.float() - noise.float()).pow(2).mean(dim=[1, 2, 3])
            rw, rl = rmse.chunk(2)
        inside = -0.5 * beta * ((mw - ml) - (rw - rl))
        loss = -F.logsigmoid(inside).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - t0)
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"impl": "torch+peft", "median_step_s": statistics.median(times[5:]),
                      "peak_rss_mb": rss_kb / 1024, "torch": torch.__version__}))


def dpoimg_side(args):
    exe = os.path.join(ROOT, "target", "release", "dpoimg-finetune")
    with tempfile.TemporaryDirectory() as tmp:
        cache = os.path.join(tmp, "cache")
        base = [exe, "dpo", "--bundle", args.bundle, "--data", args.data, "--cache-dir", cache,
                "--batch", str(args.batch), "--threads", str(args.threads), "--lr", "1e-3",
                "--beta", "2000", "--checkpoint-every", "0", "--quiet"]
        # warm the encode-once cache (not timed: the torch side gets its latents for free)
        subprocess.run(base + ["--steps", "1", "-o", os.path.join(tmp, "warm")], check=True,
                       stderr=subprocess.DEVNULL)
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        out = os.path.join(tmp, "run")
        subprocess.run(base + ["--steps", str(args.steps), "-o", out], check=True,
                       stderr=subprocess.DEVNULL)
        after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        times = [json.loads(l)["step_seconds"] for l in open(os.path.join(out, "metrics.jsonl"))]
    return {"impl": "dpoimg-finetune", "median_step_s": statistics.median(times[5:]),
            # ru_maxrss of children is the max over all children so far
            "peak_rss_mb": max(after, before) / 1024}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", default=os.path.join(ROOT, "tests", "assets", "tiny-bundle"))
    ap.add_argument("--data", default=os.path.join(ROOT, "tests", "assets", "train", "prefs.jsonl"))
    ap.add_argument("--batch", type=int, default=4, help="preference pairs per step")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--torch-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.torch_only:
        return torch_side(args)
    ours = dpoimg_side(args)
    theirs = json.loads(subprocess.run([sys.executable, __file__, "--torch-only", "--bundle", args.bundle,
                                        "--batch", str(args.batch), "--threads", str(args.threads),
                                        "--steps", str(args.steps)],
                                       check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
    print(json.dumps(ours))
    print(json.dumps(theirs))
    print(f"batch {args.batch} pairs ({2 * args.batch} samples), {args.threads} threads, {args.steps} steps")
    print(f"step time: dpoimg {ours['median_step_s'] * 1e3:.1f} ms, torch+peft {theirs['median_step_s'] * 1e3:.1f} ms"
          f" -> {theirs['median_step_s'] / ours['median_step_s']:.2f}x faster")
    print(f"peak RSS: dpoimg {ours['peak_rss_mb']:.0f} MB, torch+peft {theirs['peak_rss_mb']:.0f} MB"
          f" -> {ours['peak_rss_mb'] / theirs['peak_rss_mb']:.2f}x the memory")


if __name__ == "__main__":
    main()
