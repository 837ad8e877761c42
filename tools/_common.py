"""Helpers shared by the dpoimg asset tools (export_bundle.py, make_test_assets.py, bench_diffusers.py).

Importing this module first forces Hugging Face libraries into offline mode: no model hub is reachable from
the project's machines, and a silent download attempt would only turn into a slow, confusing failure.
"""
import hashlib
import json
import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TOOLS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(TOOLS_DIR)

# The modules dpoimg adapts by default: the attention projections of every transformer block, the
# set almost every SD-1.x LoRA trainer targets.
DEFAULT_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")

# The CLI sampler names of dpoimg, mapped to a diffusers scheduler class and the constructor overrides
# that turn that class into the sampler (applied on top of the model's scheduler_config).
SAMPLERS = {
    "ddim": ("DDIMScheduler", {}),
    "ddpm": ("DDPMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler-a": ("EulerAncestralDiscreteScheduler", {}),
    "dpmpp-2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpmpp-2m-karras": ("DPMSolverMultistepScheduler",
                        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True}),
}


def make_scheduler(sampler, base_config, **extra):
    """Build the diffusers scheduler for a dpoimg sampler name the way a pipeline swap does:
    `Cls.from_config(base_config, **overrides)`. Returns (scheduler, overrides actually passed)."""
    import diffusers
    cls_name, overrides = SAMPLERS[sampler]
    overrides = dict(overrides, **extra)
    return getattr(diffusers, cls_name).from_config(base_config, **overrides), overrides


def seeded_randn(shape, seed, generator=None):
    """torch.randn on the CPU generator, float32: the exact stream dpoimg's Rust RNG reproduces.
    Pass `generator` to continue an existing stream instead of seeding a new one."""
    import torch
    g = generator if generator is not None else torch.Generator().manual_seed(seed)
    return torch.randn(tuple(shape), generator=g, dtype=torch.float32)


def lora_target_modules(unet, targets=DEFAULT_LORA_TARGETS):
    """[(module name, nn.Linear)] of every Linear whose qualified name ends with one of `targets`
    (matched on a '.' boundary, as peft's target_modules does), in named_modules() order. This order is
    the graph-input order of unet.onnx and the order of bundle.json's lora.modules."""
    import torch
    out = []
    for name, mod in unet.named_modules():
        if isinstance(mod, torch.nn.Linear) and any(name == t or name.endswith("." + t) for t in targets):
            out.append((name, mod))
    return out


_ST_DTYPES = {"float32": "F32", "float64": "F64", "float16": "F16", "bfloat16": "BF16", "int64": "I64",
              "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL"}


def save_tensors(path, tensors, metadata=None):
    """Write a safetensors file with a byte-deterministic header.

    safetensors' own writer serialises `__metadata__` from a Rust HashMap, so a file with more than one
    metadata key changes bytes (and sha256) from run to run. Here the header is JSON with sorted keys,
    tensors are laid out in name order, and the header is space-padded to 8 bytes as the format requires.
    Tensors are copied (detached, contiguous): diffusers often returns the very tensor it was given."""
    import struct
    import torch
    header, blobs, offset = {}, [], 0
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in sorted(metadata.items())}
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        raw = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {"dtype": _ST_DTYPES[str(t.dtype).replace("torch.", "")], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    h = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def sha256_file(path, chunk=1 << 20):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def json_safe(obj):
    """Strict-JSON copy of obj: tuples become lists and non-finite floats become the strings "inf", "-inf",
    "nan". Python's json would write -Infinity (e.g. DPMSolverMultistepScheduler's lambda_min_clipped),
    which serde_json and most other parsers reject."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def write_json(path, obj, indent=1):
    """Deterministic strict JSON (UTF-8, trailing newline) so that re-running a tool gives identical bytes."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(json_safe(obj), f, indent=indent, ensure_ascii=False, allow_nan=False)
        f.write("\n")


def tree_files(root):
    """Sorted [(relative path, size in bytes)] of every file under root."""
    out = []
    for d, _, files in os.walk(root):
        for fn in files:
            p = os.path.join(d, fn)
            out.append((os.path.relpath(p, root), os.path.getsize(p)))
    return sorted(out)


def fmt_size(n):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024.0


def max_abs_diff(a, b):
    import numpy as np
    return float(np.max(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))))
