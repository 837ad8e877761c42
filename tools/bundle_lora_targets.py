#!/usr/bin/env python3
"""A copy of a bundle whose UNet graph takes LoRA on other linear modules; the weights are unchanged.

    python tools/bundle_lora_targets.py SRC_BUNDLE OUT_DIR --lora-targets to_q,to_k,to_v,to_out.0,ff.net.0.proj,ff.net.2

Why: a bundle's unet.onnx has LoRA inputs only for the modules it was exported with (bundle.json
`unet.lora`), so an adapter trained on other targets (`dpoimg-finetune --targets`) cannot be sampled
with it. When the diffusers folder the bundle came from is gone (the shipped world model exists only
as its bundle), this rebuilds the UNet from the bundle's own unet_config.json + unet.safetensors,
exports it again with tools/export_bundle.py's exporter and checks, and copies every other file. The
new graph is checked against torch as export_bundle.py checks it (with and without LoRA, three sizes);
bundle.json is written last, so a failed run leaves no bundle. Session 12 used it for a pilot
(tools/logs/world_s12_pilots.json: models/world with 111 LoRA modules; zero-adapter samples equal to
the original's bit for bit).
"""
import argparse
import json
import os
import shutil
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import export_bundle as eb  # noqa: E402
from _common import DEFAULT_LORA_TARGETS, lora_target_modules, sha256_file, write_json  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src", help="an exported bundle directory (bundle.json)")
    ap.add_argument("out", help="new bundle directory (must not be SRC)")
    ap.add_argument("--lora-targets", default=",".join(DEFAULT_LORA_TARGETS),
                    help="comma-separated module-name suffixes, matched as peft's target_modules")
    ap.add_argument("--name", help="bundle name (default: SRC's name + '-lora')")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    from diffusers import UNet2DConditionModel
    from safetensors.torch import load_file

    if os.path.realpath(args.src) == os.path.realpath(args.out):
        sys.exit("OUT must differ from SRC: the source bundle is never modified")
    targets = tuple(t for t in args.lora_targets.split(",") if t)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with open(os.path.join(args.src, "bundle.json"), encoding="utf-8") as f:
        bundle = json.load(f)
    for f in bundle["files"]:
        if sha256_file(os.path.join(args.src, f)) != bundle["files"][f]:
            sys.exit(f"{args.src}/{f}: sha256 differs from bundle.json; the source bundle is damaged")
    unet_cfg_path = os.path.join(args.src, bundle["unet"]["config"])
    with open(unet_cfg_path, encoding="utf-8") as f:
        cfg = json.load(f)
    unet = UNet2DConditionModel.from_config(cfg).eval()
    unet.load_state_dict(load_file(os.path.join(args.src, bundle["unet"]["weights"])))
    modules = lora_target_modules(unet, targets)
    if not modules:
        sys.exit(f"no linear UNet module ends with one of {targets}")
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n, _ in modules)]
    if missing:
        sys.exit(f"targets {missing} match no linear UNet module (1x1 and 3x3 convolutions take no LoRA input)")

    os.makedirs(args.out, exist_ok=True)
    if os.path.exists(os.path.join(args.out, "bundle.json")):
        os.remove(os.path.join(args.out, "bundle.json"))
    onnx_name = bundle["unet"]["onnx"]
    kept = {f: h for f, h in bundle["files"].items() if f != onnx_name and not f.startswith(onnx_name + ".")}
    for f in kept:
        shutil.copyfile(os.path.join(args.src, f), os.path.join(args.out, f))

    path = os.path.join(args.out, onnx_name)
    with tempfile.TemporaryDirectory(dir=args.out, prefix=".export-") as tmp:
        files, _ = eb.export_unet(unet, modules, bundle["text_encoder"]["max_length"], path, tmp, 17, 1e-4)

    bundle["name"] = args.name or bundle["name"] + "-lora"
    bundle["unet"]["lora"] = {
        "targets": list(targets),
        "modules": [{"name": n, "in_features": m.in_features, "out_features": m.out_features} for n, m in modules],
    }
    bundle["files"] = dict(sorted({**kept, **{f: sha256_file(os.path.join(args.out, f)) for f in files}}.items()))
    write_json(os.path.join(args.out, "bundle.json"), bundle, indent=2)
    share = sum(m.weight.numel() for _, m in modules) / sum(p.numel() for p in unet.parameters())
    print(f"{args.out}: {len(modules)} LoRA modules ({share:.1%} of the UNet's parameters adaptable)")


if __name__ == "__main__":
    main()
