"""Build every committed test asset of dpoimg from scratch: a tiny random SD-1.x model bundle, LoRA adapters
and golden outputs computed by the reference libraries (diffusers / transformers / peft / torch).

Usage:
    python tools/make_test_assets.py [--scratch DIR] [--assets DIR]

--scratch (default /work/scratch) holds what is NOT committed: the tiny diffusers pipeline (DIR/tiny-sd) and
the open_clip_torch wheel (DIR/dl) whose bpe_simple_vocab_16e6.txt.gz is the real CLIP BPE vocabulary
(fetched with `pip download --no-deps open_clip_torch==3.3.0` when missing; no model hub is used).
--assets (default <repo>/tests/assets) receives, after wiping these three folders:

    tiny-bundle/   export_bundle.py output for the tiny model (name "tiny-sd1", 16x16, 20 steps, cfg 7.5, ddim)
    adapters/      r4, r8, r4_kohya LoRA files, kohya_names.json, bad/ hostile files
    golden/        tokenizer ids, text embeddings, UNet (+LoRA) outputs, merged weights, torch.randn streams,
                   scheduler trajectories, full txt2img runs

Why a tiny random model: CI cannot download weights and has 2 cores, so the Rust tests need a model that is
small (all of tests/assets stays under 25 MB, checked below) yet has SD-1.x's exact architecture. Every
weight gets N(0, 0.03) noise on top of diffusers' init and every test adapter has non-zero A and B, so that
no layer is an accidental identity/zero and a parity test proves something.

The goldens come from the reference libraries only; ONNX Runtime is used at the end just to check the
exported bundle against them (printed, and asserted within 1e-5 for the UNet).
Deterministic: the same library versions give the same bytes on every run.
"""
import argparse
import contextlib
import gzip
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402  (offline mode before any Hugging Face import)
from _common import (DEFAULT_LORA_TARGETS, REPO_ROOT, fmt_size, lora_target_modules, make_scheduler,  # noqa: E402
                     max_abs_diff, save_tensors, seeded_randn, tree_files, write_json)

import numpy as np  # noqa: E402
import torch  # noqa: E402

OPEN_CLIP_WHEEL = "open_clip_torch==3.3.0"
ASSET_BUDGET = 40 * 1000 * 1000  # the engine issue's limit for committed test assets
TARGETS = list(DEFAULT_LORA_TARGETS)
WEIGHT_NOISE_STD = 0.03

UNET_KW = dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
               down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
               up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
               attention_head_dim=8, norm_num_groups=32)
VAE_KW = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
              up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(32, 64), layers_per_block=1,
              latent_channels=4, norm_num_groups=32, sample_size=16)
TEXT_KW = dict(vocab_size=49408, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
               max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=32, bos_token_id=49406,
               eos_token_id=49407, pad_token_id=1)
DDIM_KW = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
               clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon",
               timestep_spacing="leading")

PROMPT = "a red circle above a blue square"
# 120 words, well over 75 BPE tokens: must be truncated to BOS + 75 tokens + EOS.
_LONG_WORDS = ("a highly detailed oil painting of an old lighthouse on a rocky coast at sunset with crashing waves "
               "seagulls dramatic clouds warm golden light and a small fishing boat returning to the harbor").split()
LONG_PROMPT = " ".join((_LONG_WORDS * 4)[:120])
TOKENIZER_PROMPTS = ["a photo of a cat", "", "A RED circle above a blue square!!",
                     "(masterpiece:1.2), [blurry], {best quality}", "猫の写真 🐱 with emoji 🚀",
                     "  multiple   spaces\tand\nnewlines ", "don't stop-believing it's 3.14", LONG_PROMPT]


def log(msg):
    print(msg, flush=True)


# ------------------------------------------------------------------------------------------------ tokenizer

def ensure_open_clip_wheel(dl_dir):
    """The CLIP BPE merges ship inside the open_clip_torch wheel; PyPI is reachable, model hubs are not."""
    os.makedirs(dl_dir, exist_ok=True)
    for fn in sorted(os.listdir(dl_dir)):
        if fn.startswith("open_clip_torch-3.3.0") and fn.endswith(".whl"):
            return os.path.join(dl_dir, fn)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", OPEN_CLIP_WHEEL, "-d", dl_dir],
                   check=True)
    return ensure_open_clip_wheel(dl_dir)


def bytes_to_unicode():
    """GPT-2/CLIP byte -> printable unicode map (openai/CLIP simple_tokenizer.py)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def write_clip_vocab(wheel, dst_dir):
    """vocab.json + merges.txt exactly as openai/CLIP builds its vocabulary: 256 byte tokens, the same with
    </w>, the first 48894 merges, then <|startoftext|> 49406 and <|endoftext|> 49407."""
    os.makedirs(dst_dir, exist_ok=True)
    with zipfile.ZipFile(wheel) as z:
        merges = gzip.decompress(z.read("open_clip/bpe_simple_vocab_16e6.txt.gz")).decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in merges[1:49152 - 256 - 2 + 1]]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 49408, len(vocab)
    write_json(os.path.join(dst_dir, "vocab.json"), {t: i for i, t in enumerate(vocab)}, indent=None)
    with open(os.path.join(dst_dir, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "".join(" ".join(m) + "\n" for m in merges))


def load_openai_simple_tokenizer(wheel, work_dir):
    """OpenAI's original SimpleTokenizer (ftfy + regex + python BPE), taken from the open_clip wheel: the
    independent "slow" reference. transformers 5 no longer has a python CLIPTokenizer (CLIPTokenizerFast is
    an alias of the tokenizers-backed class), so this is what the fast ids are checked against."""
    os.makedirs(work_dir, exist_ok=True)
    src, bpe = os.path.join(work_dir, "openai_clip_tokenizer.py"), os.path.join(work_dir, "bpe_simple_vocab_16e6.txt.gz")
    with zipfile.ZipFile(wheel) as z:
        for member, dst in (("open_clip/tokenizer.py", src), ("open_clip/bpe_simple_vocab_16e6.txt.gz", bpe)):
            with open(dst, "wb") as f:
                f.write(z.read(member))
    spec = importlib.util.spec_from_file_location("openai_clip_tokenizer", src)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.SimpleTokenizer(bpe_path=bpe)


def slow_ids(simple, text, max_length=77, bos=49406, eos=49407, pad=49407):
    """HF-slow-tokenizer semantics on top of OpenAI's BPE: BOS, body truncated to max_length-2, EOS, pad."""
    body = simple.encode(text)[: max_length - 2]
    ids = [bos] + body + [eos]
    return ids + [pad] * (max_length - len(ids))


# ---------------------------------------------------------------------------------------------- tiny model

def perturb(module, seed, std=WEIGHT_NOISE_STD):
    """Add N(0, std) to every parameter. Fresh diffusers modules zero-init some layers (e.g. conv_out,
    attention out-projections in places); on such weights a parity test could pass while ignoring them."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in module.named_parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * std)
    return module


def build_tiny_pipeline(dst, wheel):
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizerFast

    tok_dir = dst + ".tokenizer-src"
    write_clip_vocab(wheel, tok_dir)
    # transformers 5: CLIPTokenizer(vocab_file=...) silently builds an EMPTY vocab; from_pretrained(dir) reads
    # vocab.json + merges.txt correctly.
    tok = CLIPTokenizerFast.from_pretrained(tok_dir, model_max_length=77)
    ids = tok("a photo of a cat").input_ids
    assert ids == [49406, 320, 1125, 539, 320, 2368, 49407], ids
    torch.manual_seed(0)
    unet = perturb(UNet2DConditionModel(**UNET_KW).eval(), 100)
    torch.manual_seed(1)
    vae = perturb(AutoencoderKL(**VAE_KW).eval(), 101)
    torch.manual_seed(2)
    te = perturb(CLIPTextModel(CLIPTextConfig(**TEXT_KW)).eval(), 102)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet,
                                   scheduler=DDIMScheduler(**DDIM_KW), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    if os.path.exists(dst):
        shutil.rmtree(dst)
    pipe.save_pretrained(dst, safe_serialization=True)
    shutil.rmtree(tok_dir)
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    log(f"tiny pipeline saved to {dst}: UNet {n(unet):,} params, VAE {n(vae):,}, text encoder {n(te):,}")


def load_pipeline(path):
    from diffusers import StableDiffusionPipeline
    pipe = StableDiffusionPipeline.from_pretrained(path, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ------------------------------------------------------------------------------------------------ adapters

def ldm_module_name(diffusers_name, layers_per_block):
    """Map a diffusers UNet attention-module name to the original LDM/CompVis name kohya files use.

    LDM numbers the UNet's blocks flat: input_blocks.0 is conv_in, then each down level has layers_per_block
    (resnet, attention) pairs (sub-index 0 = resnet, 1 = attention) plus one downsampler; output_blocks have
    layers_per_block + 1 pairs per level. Hence
        down_blocks.i.attentions.j -> input_blocks.{1 + i*(L+1) + j}.1
        mid_block.attentions.0     -> middle_block.1
        up_blocks.i.attentions.j   -> output_blocks.{i*(L+1) + j}.1
    and the rest of the name (transformer_blocks.0.attn1.to_q, ...) is identical.
    """
    parts = diffusers_name.split(".")
    L = layers_per_block
    if parts[0] == "down_blocks" and parts[2] == "attentions":
        head = ["input_blocks", str(1 + int(parts[1]) * (L + 1) + int(parts[3])), "1"]
        rest = parts[4:]
    elif parts[0] == "mid_block" and parts[1] == "attentions":
        head, rest = ["middle_block", "1"], parts[3:]
    elif parts[0] == "up_blocks" and parts[2] == "attentions":
        head = ["output_blocks", str(int(parts[1]) * (L + 1) + int(parts[3])), "1"]
        rest = parts[4:]
    else:
        raise ValueError(f"no LDM name for {diffusers_name}")
    return ".".join(head + rest)


def kohya_module_name(diffusers_name, layers_per_block):
    """lora_unet_ + LDM name with '.' -> '_' (so to_out.0 becomes to_out_0)."""
    return "lora_unet_" + ldm_module_name(diffusers_name, layers_per_block).replace(".", "_")


def random_lora(modules, rank, seed, scale):
    """{"unet.<module>.lora_A.weight": [rank,in], ...lora_B: [out,rank]} with N(0, scale) entries."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for m in modules:
        sd[f"unet.{m['name']}.lora_A.weight"] = torch.randn(rank, m["in_features"], generator=g) * scale
        sd[f"unet.{m['name']}.lora_B.weight"] = torch.randn(m["out_features"], rank, generator=g) * scale
    return sd


def lora_metadata(rank, alpha, provenance):
    """dpoimg-lora/1 metadata, plus diffusers' own `lora_adapter_metadata` so that diffusers'
    load_lora_weights builds LoraConfig with the right lora_alpha (it ignores our keys and would otherwise
    assume alpha == rank)."""
    return {
        "format": "dpoimg-lora/1", "rank": str(rank), "alpha": str(alpha),
        "targets": json.dumps(TARGETS, separators=(",", ":")),
        "provenance": json.dumps(provenance, separators=(",", ":"), sort_keys=True),
        "lora_adapter_metadata": json.dumps({"unet.r": rank, "unet.lora_alpha": alpha, "unet.target_modules": TARGETS},
                                            sort_keys=True),
    }


def write_adapters(adir, bundle, layers_per_block):
    from diffusers import UNet2DConditionModel

    mods = bundle["unet"]["lora"]["modules"]
    os.makedirs(os.path.join(adir, "bad"), exist_ok=True)
    prov = lambda seed, scale: {"tool": "tools/make_test_assets.py", "seed": seed, "std": scale}  # noqa: E731
    r4 = random_lora(mods, 4, seed=4, scale=0.3)
    r8 = random_lora(mods, 8, seed=8, scale=0.2)
    save_tensors(os.path.join(adir, "r4.safetensors"), r4, metadata=lora_metadata(4, 4, prov(4, 0.3)))
    save_tensors(os.path.join(adir, "r8.safetensors"), r8, metadata=lora_metadata(8, 16, prov(8, 0.2)))

    # kohya: down = A, up = 2B, alpha = 2 -> alpha/rank * up = B, so the effect equals r4 exactly.
    kohya, names = {}, {}
    for m in mods:
        k = kohya_module_name(m["name"], layers_per_block)
        names[k] = m["name"]
        kohya[f"{k}.lora_down.weight"] = r4[f"unet.{m['name']}.lora_A.weight"].clone()
        kohya[f"{k}.lora_up.weight"] = r4[f"unet.{m['name']}.lora_B.weight"] * 2.0
        kohya[f"{k}.alpha"] = torch.tensor(2.0)
    save_tensors(os.path.join(adir, "r4_kohya.safetensors"), kohya, metadata={"format": "pt"})
    write_json(os.path.join(adir, "kohya_names.json"), names)

    # hostile files for the loader's error paths
    m0 = mods[0]  # down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q
    key = lambda m, p: f"unet.{m}.lora_{p}.weight"  # noqa: E731
    g = torch.Generator().manual_seed(99)
    rnd = lambda *s: torch.randn(*s, generator=g) * 0.1  # noqa: E731
    meta4 = lora_metadata(4, 4, prov(99, 0.1))
    bad = {
        "wrong_shape": {key(m0["name"], "A"): rnd(4, 31), key(m0["name"], "B"): rnd(m0["out_features"], 4)},
        "unknown_module": {key(m0["name"], "A"): rnd(4, m0["in_features"]),
                           key(m0["name"], "B"): rnd(m0["out_features"], 4),
                           key("down_blocks.7.attentions.0.transformer_blocks.0.attn1.to_q", "A"): rnd(4, 32),
                           key("down_blocks.7.attentions.0.transformer_blocks.0.attn1.to_q", "B"): rnd(32, 4)},
        "rank_mismatch": {key(m0["name"], "A"): rnd(4, m0["in_features"]), key(m0["name"], "B"): rnd(m0["out_features"], 3)},
    }
    for fn, sd in bad.items():
        save_tensors(os.path.join(adir, "bad", fn + ".safetensors"), sd, metadata=meta4)
    with open(os.path.join(adir, "r4.safetensors"), "rb") as f:
        blob = f.read()
    with open(os.path.join(adir, "bad", "truncated.safetensors"), "wb") as f:
        f.write(blob[: len(blob) // 2])
    # A well-formed adapter for another UNet: cross_attention_dim 48, so every attn2.to_k/to_v has in=48.
    torch.manual_seed(0)
    other = UNet2DConditionModel(**dict(UNET_KW, cross_attention_dim=48))
    other_mods = [{"name": n, "in_features": l.in_features, "out_features": l.out_features}
                  for n, l in lora_target_modules(other, TARGETS)]
    save_tensors(os.path.join(adir, "bad", "other_bundle.safetensors"), random_lora(other_mods, 4, seed=48, scale=0.3),
                 metadata=lora_metadata(4, 4, prov(48, 0.3)))
    return r4, r8


# ------------------------------------------------------------------------------------------------- goldens

@contextlib.contextmanager
def injected_noise(module, draws, seed0):
    """Replace `randn_tensor` in a diffusers scheduler module: draw k returns seeded_randn(shape, seed0 + k)
    and is appended to `draws`, so that stochastic samplers become reproducible from recorded tensors."""
    orig = module.randn_tensor

    def fake(shape, generator=None, device=None, dtype=None, layout=None):
        t = seeded_randn(tuple(shape), seed0 + len(draws)).to(dtype or torch.float32)
        draws.append(t.clone())
        return t

    module.randn_tensor = fake
    try:
        yield draws
    finally:
        module.randn_tensor = orig


def plain_config(cfg):
    """scheduler.config as a plain dict. diffusers' bookkeeping list `_use_default_values` comes from a set,
    so it is sorted to keep the file byte-identical across runs."""
    d = dict(cfg)
    if "_use_default_values" in d:
        d["_use_default_values"] = sorted(d["_use_default_values"])
    return d


def golden_tokenizer(gdir, pipe, simple):
    tok = pipe.tokenizer
    rows = []
    for p in TOKENIZER_PROMPTS:
        ids = tok(p, padding="max_length", max_length=77, truncation=True).input_ids
        ref = slow_ids(simple, p)
        assert len(ids) == 77 and ids == ref, f"fast vs OpenAI tokenizer differ on {p!r}:\n{ids}\n{ref}"
        rows.append({"prompt": p, "ids": ids})
    long_ids = rows[-1]["ids"]
    assert long_ids[-1] == 49407 and 49407 not in long_ids[1:-1], "long prompt must truncate with EOS last"
    write_json(os.path.join(gdir, "tokenizer.json"), rows, indent=None)
    log(f"  tokenizer: {len(rows)} prompts, fast == OpenAI SimpleTokenizer on all")


def golden_text_embeddings(gdir, pipe):
    ids = pipe.tokenizer(["", PROMPT], padding="max_length", max_length=77, truncation=True,
                         return_tensors="pt").input_ids.to(torch.int64)
    with torch.no_grad():
        hs = pipe.text_encoder(ids).last_hidden_state
    save_tensors(os.path.join(gdir, "text_embeddings.safetensors"), {"input_ids": ids, "last_hidden_state": hs})
    return ids, hs


def golden_unet(gdir, scratch_pipe_dir, adir, r4, r8):
    """UNet outputs with peft adapters loaded through diffusers, the composition reference, and the merged
    weights; cross-checked against plain peft and against the kohya file."""
    from peft import LoraConfig
    from peft.utils import set_peft_model_state_dict

    x = {"sample": seeded_randn([2, 4, 8, 8], 11), "timestep": torch.tensor([999.0, 10.5]),
         "encoder_hidden_states": seeded_randn([2, 77, 32], 12)}
    run = lambda unet: unet(x["sample"], x["timestep"], x["encoder_hidden_states"], return_dict=False)[0].detach().clone()  # noqa: E731
    pipe = load_pipeline(scratch_pipe_dir)
    out = dict(x)
    with torch.no_grad():
        out["out_base"] = run(pipe.unet)
        pipe.load_lora_weights(adir, weight_name="r4.safetensors", adapter_name="r4")
        pipe.load_lora_weights(adir, weight_name="r8.safetensors", adapter_name="r8")
        pipe.set_adapters(["r4"], adapter_weights=[1.0])
        out["out_r4"] = run(pipe.unet)
        pipe.set_adapters(["r8"], adapter_weights=[1.0])
        out["out_r8"] = run(pipe.unet)
        pipe.set_adapters(["r4", "r8"], adapter_weights=[0.7, 0.5])
        out["out_r4_x0.7_r8_x0.5"] = run(pipe.unet)
        pipe.set_adapters(["r4"], adapter_weights=[0.0])
        out["out_r4_x0"] = run(pipe.unet)
    save_tensors(os.path.join(gdir, "unet.safetensors"), out)
    base = out["out_base"]
    for k in ("out_r4", "out_r8", "out_r4_x0.7_r8_x0.5"):
        d = max_abs_diff(out[k], base)
        log(f"  unet: {k:22s} moves the output by {d:.3e} (max |base| {float(base.abs().max()):.3f})")
        assert d > 1e-2, f"{k} barely changes the UNet output"
    d0 = max_abs_diff(out["out_r4_x0"], base)
    log(f"  unet: out_r4_x0 vs out_base {d0:.1e}")
    assert d0 < 1e-6

    # cross-checks: plain peft (explicit LoraConfig) and diffusers' kohya conversion must agree exactly
    for label, sd, rank, alpha, ref in (("r4", r4, 4, 4, "out_r4"), ("r8", r8, 8, 16, "out_r8")):
        p = load_pipeline(scratch_pipe_dir)
        p.unet.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, target_modules=TARGETS), adapter_name=label)
        set_peft_model_state_dict(p.unet, {k[len("unet."):]: v for k, v in sd.items()}, adapter_name=label)
        with torch.no_grad():
            d = max_abs_diff(run(p.unet), out[ref])
        log(f"  unet: plain peft LoraConfig(r={rank}, lora_alpha={alpha}) vs diffusers-loaded {label}: {d:.1e}")
        assert d < 1e-6
    # StableDiffusionPipeline.load_lora_weights only remaps LDM block names (input_blocks_N_1...) when it is
    # handed the UNet config; without it SD-1 kohya files with LDM names load into the wrong modules.
    p = load_pipeline(scratch_pipe_dir)
    p.load_lora_weights(adir, weight_name="r4_kohya.safetensors", adapter_name="k", unet_config=p.unet.config)
    with torch.no_grad():
        d = max_abs_diff(run(p.unet), out["out_r4"])
    log(f"  unet: diffusers-loaded r4_kohya vs r4: {d:.1e}")
    assert d < 1e-5

    # merged weights: fuse_lora then unload keeps the fused base weights under plain diffusers names
    p = load_pipeline(scratch_pipe_dir)
    p.load_lora_weights(adir, weight_name="r4.safetensors", adapter_name="r4")
    p.fuse_lora(components=["unet"], lora_scale=1.0, adapter_names=["r4"])
    p.unload_lora_weights()
    merged = {k: v.detach().contiguous() for k, v in p.unet.state_dict().items()}
    assert not any("lora" in k or "base_layer" in k for k in merged), "peft names leaked into merged weights"
    base_sd = load_pipeline(scratch_pipe_dir).unet.state_dict()
    assert set(merged) == set(base_sd)
    manual = max(max_abs_diff(merged[f"{m}.weight"], base_sd[f"{m}.weight"] +
                              r4[f"unet.{m}.lora_B.weight"] @ r4[f"unet.{m}.lora_A.weight"])
                 for m in {k[len("unet."):-len(".lora_A.weight")] for k in r4 if k.endswith("lora_A.weight")})
    with torch.no_grad():
        d = max_abs_diff(run(p.unet), out["out_r4"])
    log(f"  unet: merged_r4 forward vs out_r4 {d:.1e}; merged W vs W + B@A {manual:.1e}")
    assert d < 1e-4 and manual < 1e-5
    save_tensors(os.path.join(gdir, "merged_r4.safetensors"), merged, metadata={"format": "pt"})
    return out


RANDN_CASES = [(0, [1, 4, 8, 8]), (42, [2, 4, 8, 12]), (12345, [1, 4, 64, 64]), (7, [1, 4, 3, 3]), (3, [20]),
               (2 ** 40 + 5, [1, 4, 8, 8])]
RANDN_SEQ = (99, [[1, 4, 8, 8], [1, 4, 8, 8], [2, 4, 4, 4]])


def golden_randn(gdir):
    t = {f"randn.{i}": seeded_randn(shape, seed) for i, (seed, shape) in enumerate(RANDN_CASES)}
    g = torch.Generator().manual_seed(RANDN_SEQ[0])
    for i, shape in enumerate(RANDN_SEQ[1]):
        t[f"randn_seq.{i}"] = seeded_randn(shape, None, generator=g)
    save_tensors(os.path.join(gdir, "randn.safetensors"), t)
    write_json(os.path.join(gdir, "randn.json"), {
        "cases": [{"key": f"randn.{i}", "seed": s, "shape": sh} for i, (s, sh) in enumerate(RANDN_CASES)],
        "sequence": {"seed": RANDN_SEQ[0], "keys": [f"randn_seq.{i}" for i in range(len(RANDN_SEQ[1]))],
                     "shapes": RANDN_SEQ[1]},
        "dtype": "float32", "generator": "torch.Generator() (CPU, mt19937)"})


# name, sampler, from_config overrides (on top of the sampler's own), steps, DDIM eta, patch randn_tensor
SCHEDULER_CASES = [
    ("ddim_leading_eps", "ddim", {}, 7, 0.0, False),
    ("ddim_trailing_v", "ddim", {"timestep_spacing": "trailing", "prediction_type": "v_prediction"}, 10, 0.0, False),
    ("ddim_linspace", "ddim", {"timestep_spacing": "linspace"}, 10, 0.0, False),
    ("ddim_eta0.5", "ddim", {}, 7, 0.5, False),
    ("ddim_alpha_one", "ddim", {"set_alpha_to_one": True}, 7, 0.0, False),
    ("ddim_linear_beta", "ddim", {"beta_schedule": "linear"}, 7, 0.0, False),
    ("ddim_cosine", "ddim", {"beta_schedule": "squaredcos_cap_v2"}, 7, 0.0, False),
    ("ddpm_leading_eps", "ddpm", {"variance_type": "fixed_small"}, 7, 0.0, True),
    ("ddpm_v", "ddpm", {"prediction_type": "v_prediction"}, 7, 0.0, True),
    ("euler_leading", "euler", {}, 7, 0.0, False),
    ("euler_linspace", "euler", {"timestep_spacing": "linspace"}, 10, 0.0, False),
    ("euler_trailing_v", "euler", {"timestep_spacing": "trailing", "prediction_type": "v_prediction"}, 10, 0.0, False),
    ("euler_karras", "euler", {"use_karras_sigmas": True}, 10, 0.0, False),
    ("euler_a_leading", "euler-a", {}, 7, 0.0, True),
    ("euler_a_v", "euler-a", {"prediction_type": "v_prediction"}, 10, 0.0, True),
    ("dpmpp_2m_leading", "dpmpp-2m", {}, 7, 0.0, False),
    ("dpmpp_2m_linspace_v", "dpmpp-2m", {"timestep_spacing": "linspace", "prediction_type": "v_prediction"}, 10, 0.0, False),
    ("dpmpp_2m_karras", "dpmpp-2m-karras", {}, 10, 0.0, False),
    ("dpmpp_2m_1step", "dpmpp-2m", {}, 1, 0.0, False),
    ("dpmpp_2m_25steps", "dpmpp-2m", {}, 25, 0.0, False),
]
SCHED_SHAPE = [1, 4, 8, 8]


def golden_schedulers(gdir, ddim_config):
    """Drive each scheduler exactly like StableDiffusionPipeline's loop, with model outputs that are seeded
    random tensors (independent of the sample) so every step's arithmetic is exercised."""
    tensors, cases = {}, []
    for name, sampler, extra, steps, eta, patch in SCHEDULER_CASES:
        sched, overrides = make_scheduler(sampler, ddim_config, **extra)
        sched.set_timesteps(steps)
        sample = seeded_randn(SCHED_SHAPE, 1) * sched.init_noise_sigma
        tensors[f"{name}.sample0"] = sample
        draws = []
        module = sys.modules[type(sched).__module__]
        with (injected_noise(module, draws, 200) if patch else contextlib.nullcontext()):
            for i, t in enumerate(sched.timesteps):
                scaled = sched.scale_model_input(sample, t)
                mo = seeded_randn(SCHED_SHAPE, 100 + i)
                kw, drawn = {}, len(draws)
                if eta:
                    kw = {"eta": eta, "variance_noise": seeded_randn(SCHED_SHAPE, 200 + i)}
                    tensors[f"{name}.noise.{i}"] = kw["variance_noise"]
                prev = sched.step(mo, t, sample, **kw).prev_sample
                if len(draws) > drawn:
                    assert len(draws) == drawn + 1
                    tensors[f"{name}.noise.{i}"] = draws[-1]
                tensors[f"{name}.model_output.{i}"] = mo
                tensors[f"{name}.scaled.{i}"] = scaled.clone()
                tensors[f"{name}.prev.{i}"] = prev.clone()
                sample = prev
        if name == "ddim_leading_eps":
            tensors[f"{name}.alphas_cumprod"] = sched.alphas_cumprod.to(torch.float64)
        sigmas = getattr(sched, "sigmas", None)
        cases.append({
            "name": name, "class": type(sched).__name__, "sampler": sampler, "overrides": overrides,
            "config": plain_config(sched.config), "steps": steps, "eta": eta,
            "timesteps": [float(v) for v in sched.timesteps.to(torch.float64)],
            "timesteps_dtype": str(sched.timesteps.dtype).replace("torch.", ""),
            "sigmas": None if sigmas is None else [float(v) for v in sigmas.to(torch.float64)],
            "init_noise_sigma": float(sched.init_noise_sigma),
            "noise_steps": sorted(int(k.rsplit(".", 1)[1]) for k in tensors if k.startswith(f"{name}.noise.")),
        })
    save_tensors(os.path.join(gdir, "schedulers.safetensors"), tensors)
    write_json(os.path.join(gdir, "schedulers.json"), cases)
    log(f"  schedulers: {len(cases)} cases, {len(tensors)} tensors")


TXT2IMG_CASES = [
    dict(case="ddim_4", sampler="ddim", steps=4, guidance=7.5, width=16, height=16),
    dict(case="dpmpp_2m_karras_5_neg", sampler="dpmpp-2m-karras", steps=5, guidance=5.0, width=24, height=16,
         negative_prompt="blurry"),
    dict(case="euler_a_4_x2", sampler="euler-a", steps=4, guidance=7.5, width=16, height=16, count=2),
    dict(case="ddim_4_r4", sampler="ddim", steps=4, guidance=7.5, width=16, height=16, adapter="r4.safetensors"),
    dict(case="euler_6_nocfg", sampler="euler", steps=6, guidance=1.0, width=16, height=16),
    dict(case="ddpm_5", sampler="ddpm", steps=5, guidance=7.5, width=16, height=16),
    # Latents 7x9: not a multiple of the UNet's up factor (diffusers' forward_upsample_size path).
    dict(case="euler_a_odd_18x14", sampler="euler-a", steps=4, guidance=7.5, width=18, height=14),
]
STOCHASTIC = ("euler-a", "ddpm")


def golden_txt2img(gdir, scratch_pipe_dir, adir):
    tensors, rows = {}, []
    for idx, c in enumerate(TXT2IMG_CASES):
        c = dict(dict(prompt=PROMPT, negative_prompt=None, count=1, adapter=None), **c)
        name = c["case"]
        pipe = load_pipeline(scratch_pipe_dir)
        overrides = {}
        if c["sampler"] != "ddim":  # the saved pipeline already runs DDIM
            pipe.scheduler, overrides = make_scheduler(c["sampler"], pipe.scheduler.config)
        if c["adapter"]:
            pipe.load_lora_weights(adir, weight_name=c["adapter"])
        seed = 1000 + idx
        latents = seeded_randn([c["count"], 4, c["height"] // 2, c["width"] // 2], seed)
        final, draws = {}, []

        def on_step_end(_pipe, i, t, kw):
            final["latents"] = kw["latents"].detach().clone()
            return kw

        module = sys.modules[type(pipe.scheduler).__module__]
        if c["width"] % 8 or c["height"] % 8:
            # diffusers insists on multiples of 8 px (SD's VAE factor); the tiny VAE's factor is 2, and
            # odd latent sizes exercise the UNet's size-following upsampling. Only the input check is
            # skipped; the pipeline's computation is untouched.
            pipe.check_inputs = lambda *a, **k: None
        with (injected_noise(module, draws, 300) if c["sampler"] in STOCHASTIC else contextlib.nullcontext()):
            with torch.no_grad():
                img = pipe(c["prompt"], negative_prompt=c["negative_prompt"], num_inference_steps=c["steps"],
                           guidance_scale=c["guidance"], height=c["height"], width=c["width"],
                           num_images_per_prompt=c["count"], latents=latents.clone(), output_type="np",
                           callback_on_step_end=on_step_end).images
        tensors[f"{name}.init_latents"] = latents
        tensors[f"{name}.final_latents"] = final["latents"]
        tensors[f"{name}.image"] = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))
        for k, d in enumerate(draws):
            tensors[f"{name}.noise.{k}"] = d
        rows.append({
            "case": name, "prompt": c["prompt"], "negative_prompt": c["negative_prompt"], "sampler": c["sampler"],
            "steps": c["steps"], "guidance": c["guidance"], "width": c["width"], "height": c["height"],
            "count": c["count"], "adapter": c["adapter"], "latents_seed": seed, "scheduler_overrides": overrides,
            "timesteps": [float(v) for v in pipe.scheduler.timesteps.to(torch.float64)],
            "init_noise_sigma": float(pipe.scheduler.init_noise_sigma), "noise_draws": len(draws),
        })
        log(f"  txt2img {name:24s} image {tuple(img.shape)} range {img.min():.3f}..{img.max():.3f}"
            f"{f', {len(draws)} noise draws' if draws else ''}")
    save_tensors(os.path.join(gdir, "txt2img.safetensors"), tensors)
    write_json(os.path.join(gdir, "txt2img.json"), rows)


# ---------------------------------------------------------------------------------------------- onnx check

def check_bundle_against_goldens(bundle_dir, bundle, unet_out, r4, r8, te_ids, te_hidden):
    """The exported graphs must reproduce the reference outputs: LoRA tensors fed as plain inputs, with
    alpha/rank x strength folded into B and several adapters concatenated along the rank axis."""
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(os.path.join(bundle_dir, "unet.onnx"), so, providers=["CPUExecutionProvider"])
    feeds = {k: unet_out[k].numpy() for k in ("sample", "timestep", "encoder_hidden_states")}
    mods = [m["name"] for m in bundle["unet"]["lora"]["modules"]]

    def lora_feeds(parts):  # parts: [(adapter state dict, alpha/rank * strength)]
        f = {}
        for m in mods:
            f[f"{m}.lora_A.weight"] = torch.cat([sd[f"unet.{m}.lora_A.weight"] for sd, _ in parts], 0).numpy()
            f[f"{m}.lora_B.weight"] = torch.cat([sd[f"unet.{m}.lora_B.weight"] * s for sd, s in parts], 1).numpy()
        return f

    checks = [("out_base", {}, 1e-5), ("out_r4", lora_feeds([(r4, 1.0)]), 1e-5),
              ("out_r8", lora_feeds([(r8, 16 / 8)]), 1e-5),
              ("out_r4_x0.7_r8_x0.5", lora_feeds([(r4, 0.7), (r8, 0.5 * 16 / 8)]), 1e-5),
              ("out_r4_x0", lora_feeds([(r4, 0.0)]), 1e-5)]
    for key, extra, tol in checks:
        got = sess.run(["out_sample"], dict(feeds, **extra))[0]
        d = max_abs_diff(got, unet_out[key])
        log(f"  onnxruntime unet.onnx vs {key:22s} max|diff| = {d:.2e}")
        assert d <= tol, f"unet.onnx disagrees with {key}: {d}"
    te = ort.InferenceSession(os.path.join(bundle_dir, "text_encoder.onnx"), so, providers=["CPUExecutionProvider"])
    d = max_abs_diff(te.run(None, {"input_ids": te_ids.numpy()})[0], te_hidden)
    log(f"  onnxruntime text_encoder.onnx vs golden last_hidden_state max|diff| = {d:.2e}")
    assert d <= 1e-5


# -------------------------------------------------------------------------------------------------- main

def main(argv=None):
    import export_bundle

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scratch", default="/work/scratch", help="work folder for uncommitted files")
    ap.add_argument("--assets", default=os.path.join(REPO_ROOT, "tests", "assets"))
    a = ap.parse_args(argv)
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    t_start = time.time()
    timings = {}
    scratch, assets = os.path.abspath(a.scratch), os.path.abspath(a.assets)
    pipe_dir = os.path.join(scratch, "tiny-sd")
    bundle_dir, adir, gdir = (os.path.join(assets, d) for d in ("tiny-bundle", "adapters", "golden"))
    for d in (bundle_dir, adir):
        if os.path.exists(d):
            shutil.rmtree(d)
        os.makedirs(d)
    # golden/ also holds other scripts' goldens (export_imagereward.py, export_metrics.py,
    # make_stats_goldens.py, make_dpok_goldens.py): remove only what this script writes.
    others = {"score", "metrics", "stats", "dpok"}
    os.makedirs(gdir, exist_ok=True)
    for name in os.listdir(gdir):
        if name not in others:
            p = os.path.join(gdir, name)
            shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)

    t0 = time.time()
    wheel = ensure_open_clip_wheel(os.path.join(scratch, "dl"))
    build_tiny_pipeline(pipe_dir, wheel)
    timings["tiny pipeline"] = time.time() - t0

    t0 = time.time()
    bundle = export_bundle.export_bundle(pipe_dir, bundle_dir, name="tiny-sd1", width=16, height=16, steps=20,
                                         guidance=7.5, sampler="ddim")
    timings["export_bundle"] = time.time() - t0

    t0 = time.time()
    r4, r8 = write_adapters(adir, bundle, UNET_KW["layers_per_block"])
    timings["adapters"] = time.time() - t0

    t0 = time.time()
    log("goldens:")
    pipe = load_pipeline(pipe_dir)
    golden_tokenizer(gdir, pipe, load_openai_simple_tokenizer(wheel, os.path.join(scratch, "dl", "openai")))
    te_ids, te_hidden = golden_text_embeddings(gdir, pipe)
    unet_out = golden_unet(gdir, pipe_dir, adir, r4, r8)
    golden_randn(gdir)
    golden_schedulers(gdir, pipe.scheduler.config)
    golden_txt2img(gdir, pipe_dir, adir)
    timings["goldens"] = time.time() - t0

    # The trainer's goldens live in the same folder (wiped above): regenerate them from the same tiny
    # pipeline so one command rebuilds every committed golden.
    t0 = time.time()
    here = os.path.dirname(os.path.abspath(__file__))
    for script, extra in (("make_encoder_golden.py", ["--scratch", scratch]), ("make_loss_goldens.py", []),
                          ("make_optim_goldens.py", []), ("make_trainer_goldens.py", [])):
        log(f"running {script}")
        subprocess.run([sys.executable, os.path.join(here, script), *extra], check=True, stdout=subprocess.DEVNULL)
    timings["trainer goldens"] = time.time() - t0

    t0 = time.time()
    log("onnxruntime check of the bundle against the goldens:")
    check_bundle_against_goldens(bundle_dir, bundle, unet_out, r4, r8, te_ids, te_hidden)
    timings["onnx check"] = time.time() - t0

    log("\nfiles under " + assets + ":")
    total = 0
    for rel, size in tree_files(assets):
        log(f"  {rel:58s} {size:>12,d} B")
        total += size
    log(f"  {'TOTAL':58s} {total:>12,d} B ({fmt_size(total)}; budget {ASSET_BUDGET:,} B)")
    assert total <= ASSET_BUDGET, f"tests/assets is {total:,} B, over the {ASSET_BUDGET:,} B budget"
    log("timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()) + f"; total {time.time() - t_start:.1f}s")


if __name__ == "__main__":
    main()
