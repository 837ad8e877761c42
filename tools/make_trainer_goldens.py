"""Golden values for dpoimg's own UNet trainer (src/train/): torch autograd (+ peft for LoRA) on every
layer type, and on whole UNets.

Usage:
    python tools/make_trainer_goldens.py [--assets DIR]

Writes DIR/golden/trainer/ (default DIR = <repo>/tests/assets):

    layers.safetensors + layers.json
        one case per layer type: its weights (diffusers names under `<case>.w.`), LoRA tensors under
        `<case>.lora.<module>.lora_{A,B}.weight`, inputs, a fixed random upstream gradient `<case>.g`, and what
        torch autograd gives: the output `<case>.out`, the input gradient(s) `<case>.dx` (...), and every LoRA
        gradient `<case>.grad.<module>.lora_{A,B}.weight`.
    unet_tiny.safetensors + unet_tiny.json
        the tiny bundle's UNet (tests/assets/tiny-bundle): inputs (2 samples, different timesteps), the output
        without LoRA and with the r4 and r8 adapters loaded through peft, and for loss = sum(out * G) the gradient
        w.r.t. every LoRA A and B tensor and w.r.t. the input sample.
    unet_sd2like.safetensors + unet_sd2like_config.json
        a second, even smaller random UNet with the SD-2.x options (linear proj_in/out, per-block head counts,
        upcast_attention, transformer_layers_per_block > 1, three levels, odd latent size so the up-samplers get
        an explicit output size, freq_shift 1 without flip): weights, inputs, outputs, gradients.

Why: the trainer implements each layer's forward and backward by hand (no autograd), so each one is proved
against torch autograd, and the assembled UNet against torch + peft: LoRA gradients of EVERY adapted tensor
(to_q and to_k included, the ones candle silently drops) and the gradient w.r.t. the input.

Rerun this after tools/make_test_assets.py: that tool wipes tests/assets/golden/ and rebuilds the tiny bundle.
Deterministic (seeded, single-threaded torch).
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402,F401  (offline mode before any Hugging Face import)
from _common import DEFAULT_LORA_TARGETS, REPO_ROOT, fmt_size, save_tensors, write_json  # noqa: E402

import torch  # noqa: E402

TARGETS = list(DEFAULT_LORA_TARGETS)


def log(msg):
    print(msg, flush=True)


class Rand:
    """One seeded CPU generator for the whole file, so every tensor is reproducible."""

    def __init__(self, seed):
        self.g = torch.Generator().manual_seed(seed)

    def n(self, *shape, std=1.0):
        return torch.randn(shape, generator=self.g, dtype=torch.float32) * std


def perturb(module, rnd, std=0.1):
    """Adds noise to every parameter: default inits (GroupNorm gamma=1, beta=0, zero biases) would let a wrong
    affine or bias pass unnoticed."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(rnd.n(*p.shape, std=std))
    return module


def add_lora(module, rnd, targets, rank, alpha, std=0.2):
    """peft LoRA on `targets` with non-zero A and B (peft would start B at zero, giving zero A-gradients)."""
    from peft import LoraConfig, inject_adapter_in_model
    module = inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets), module)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "lora_" in name:
                p.copy_(rnd.n(*p.shape, std=std))
    for name, p in module.named_parameters():
        p.requires_grad_("lora_" in name)
    return module


def lora_tensors(module):
    """{`<module>.lora_A.weight`: tensor} in the adapter-file convention (peft's `.default` dropped)."""
    out = {}
    for name, p in module.named_parameters():
        if "lora_" in name:
            out[name.replace(".default", "")] = p
    return out


class Cases:
    def __init__(self):
        self.tensors, self.meta = {}, {}

    def add(self, case, meta, module=None, inputs=None, out=None, g=None, grads_of=None, lora=None, extra=None):
        """Runs backward of sum(out * g) and records everything the Rust test needs."""
        t = self.tensors
        if module is not None:
            for name, p in module.state_dict().items():
                # Downsample2D registers its conv twice (`conv` and the legacy alias `Conv2d_0`);
                # diffusers checkpoints keep only `conv`.
                if "lora_" not in name and "Conv2d_0" not in name:
                    t[f"{case}.w.{name.replace('.base_layer', '')}"] = p
        for k, v in (inputs or {}).items():
            t[f"{case}.{k}"] = v.detach()
        if out is not None:
            t[f"{case}.out"] = out.detach()
        if g is not None:
            t[f"{case}.g"] = g
            wrt = [v for v in (grads_of or {}).values()]
            lora_params = list(lora_tensors(module).items()) if lora else []
            grads = torch.autograd.grad((out * g).sum(), wrt + [p for _, p in lora_params], allow_unused=False)
            for k, gr in zip(grads_of or {}, grads[:len(wrt)]):
                t[f"{case}.{k}"] = gr
            for (name, p), gr in zip(lora_params, grads[len(wrt):]):
                t[f"{case}.lora.{name}"] = p.detach()
                t[f"{case}.grad.{name}"] = gr
                assert gr.abs().max() > 0, f"{case}: zero gradient for {name}"
        for k, v in (extra or {}).items():
            t[f"{case}.{k}"] = v.detach()
        self.meta[case] = meta


def layer_cases(rnd):
    from diffusers.models.attention import BasicTransformerBlock, FeedForward
    from diffusers.models.attention_processor import Attention
    from diffusers.models.downsampling import Downsample2D
    from diffusers.models.embeddings import TimestepEmbedding, Timesteps
    from diffusers.models.resnet import ResnetBlock2D
    from diffusers.models.transformers.transformer_2d import Transformer2DModel
    from diffusers.models.upsampling import Upsample2D

    torch.manual_seed(0)  # module constructors draw their default init from the global generator
    c = Cases()
    leaf = lambda *s: rnd.n(*s).requires_grad_(True)  # noqa: E731

    # convolutions as the UNet uses them: 3x3 pad 1 (conv_in/out, resnets), 1x1 (shortcut), 3x3 stride 2
    for case, cin, cout, k, stride, pad, hw in (("conv3x3", 8, 16, 3, 1, 1, (6, 5)), ("conv1x1", 16, 8, 1, 1, 0, (5, 4)),
                                                ("conv3x3_s2", 8, 8, 3, 2, 1, (7, 6))):
        m = perturb(torch.nn.Conv2d(cin, cout, k, stride=stride, padding=pad), rnd)
        x = leaf(2, cin, *hw)
        out = m(x)
        c.add(case, dict(kind="conv2d", cin=cin, cout=cout, kernel=k, stride=stride, padding=pad), m, {"x": x}, out,
              rnd.n(*out.shape), {"dx": x})

    for case, groups, ch, eps, silu in (("group_norm", 4, 16, 1e-5, False), ("group_norm_silu", 8, 16, 1e-6, True)):
        m = perturb(torch.nn.GroupNorm(groups, ch, eps=eps), rnd, std=0.3)
        x = (rnd.n(2, ch, 5, 3) * 2 + 0.5).requires_grad_(True)
        out = m(x)
        if silu:
            out = torch.nn.functional.silu(out)
        c.add(case, dict(kind="group_norm", groups=groups, channels=ch, eps=eps, silu=silu), m, {"x": x}, out,
              rnd.n(*out.shape), {"dx": x})

    x = (rnd.n(2, 16, 4, 4) * 3).requires_grad_(True)
    out = torch.nn.functional.silu(x)
    c.add("silu", dict(kind="silu"), None, {"x": x}, out, rnd.n(*out.shape), {"dx": x})

    class Wrap(torch.nn.Module):  # peft wants named submodules
        def __init__(self, **mods):
            super().__init__()
            for k, v in mods.items():
                setattr(self, k, v)

    m = add_lora(Wrap(lin=perturb(torch.nn.Linear(24, 40), rnd)), rnd, ["lin"], rank=4, alpha=8)
    x = leaf(3, 7, 24)
    out = m.lin(x)
    c.add("linear_lora", dict(kind="linear", module="lin", in_features=24, out_features=40, bias=True, rank=4, alpha=8),
          m, {"x": x}, out, rnd.n(*out.shape), {"dx": x}, lora=True)

    m = perturb(torch.nn.LayerNorm(24), rnd, std=0.3)
    x = (rnd.n(3, 7, 24) * 2 - 0.3).requires_grad_(True)
    out = m(x)
    c.add("layer_norm", dict(kind="layer_norm", dim=24, eps=1e-5), m, {"x": x}, out, rnd.n(*out.shape), {"dx": x})

    # attention: diffusers Attention (SDPA processor), LoRA on q/k/v/out as peft applies it
    m = add_lora(perturb(Attention(query_dim=32, heads=4, dim_head=8, bias=False, out_bias=True), rnd), rnd, TARGETS, 4, 4)
    x = leaf(2, 12, 32)
    out = m(x)
    c.add("self_attention", dict(kind="attention", query_dim=32, context_dim=None, heads=4, dim_head=8, rank=4, alpha=4),
          m, {"x": x}, out, rnd.n(*out.shape), {"dx": x}, lora=True)

    m = add_lora(perturb(Attention(query_dim=32, cross_attention_dim=20, heads=2, dim_head=16, upcast_attention=True),
                         rnd), rnd, TARGETS, 2, 6)
    x, ctx = leaf(2, 12, 32), rnd.n(2, 7, 20)
    out = m(x, encoder_hidden_states=ctx)
    c.add("cross_attention", dict(kind="attention", query_dim=32, context_dim=20, heads=2, dim_head=16, rank=2, alpha=6),
          m, {"x": x, "ctx": ctx}, out, rnd.n(*out.shape), {"dx": x}, lora=True)

    m = add_lora(perturb(FeedForward(16, activation_fn="geglu"), rnd), rnd, ["net.0.proj", "net.2"], 3, 3)
    x = leaf(2, 12, 16)
    out = m(x)
    c.add("geglu_ff", dict(kind="feed_forward", dim=16, inner=64, rank=3, alpha=3), m, {"x": x}, out,
          rnd.n(*out.shape), {"dx": x}, lora=True)

    m = perturb(Upsample2D(16, use_conv=True), rnd)
    x = leaf(2, 16, 4, 3)
    out = m(x)
    c.add("upsample", dict(kind="upsample", channels=16, out_hw=[8, 6]), m, {"x": x}, out, rnd.n(*out.shape), {"dx": x})
    m = perturb(Upsample2D(16, use_conv=True), rnd)
    x = leaf(2, 16, 4, 3)
    out = m(x, output_size=(7, 5))
    c.add("upsample_size", dict(kind="upsample", channels=16, out_hw=[7, 5]), m, {"x": x}, out, rnd.n(*out.shape),
          {"dx": x})

    for case, pad, hw in (("downsample", 1, (8, 7)), ("downsample_pad0", 0, (8, 7))):
        m = perturb(Downsample2D(16, use_conv=True, padding=pad), rnd)
        x = leaf(2, 16, *hw)
        out = m(x)
        c.add(case, dict(kind="downsample", channels=16, padding=pad), m, {"x": x}, out, rnd.n(*out.shape), {"dx": x})

    # timestep embedding: sinusoid (no gradient: timesteps are data) then the MLP with LoRA on both linears
    t = torch.tensor([999.0, 10.5, 0.0, 500.0])
    for case, flip, shift, dim in (("timestep_sinusoid", True, 0, 32), ("timestep_sinusoid_shift1", False, 1, 20),
                                   ("timestep_sinusoid_odd", True, 0, 7)):
        out = Timesteps(dim, flip_sin_to_cos=flip, downscale_freq_shift=shift)(t)
        c.add(case, dict(kind="timestep_sinusoid", dim=dim, flip_sin_to_cos=flip, freq_shift=shift), None, {"t": t}, out)
    sin = Timesteps(32, flip_sin_to_cos=True, downscale_freq_shift=0)(t).requires_grad_(True)
    m = add_lora(perturb(TimestepEmbedding(32, 64), rnd), rnd, ["linear_1", "linear_2"], 4, 2)
    out = m(sin)
    c.add("time_embedding", dict(kind="time_embedding", in_dim=32, dim=64, rank=4, alpha=2), m, {"x": sin}, out,
          rnd.n(*out.shape), {"dx": sin}, lora=True)

    # resnet blocks (the block applies SiLU to temb itself; dtemb is w.r.t. temb before that SiLU)
    for case, cin, cout, lora in (("resnet", 16, 24, True), ("resnet_same", 16, 16, False)):
        m = perturb(ResnetBlock2D(in_channels=cin, out_channels=cout, temb_channels=32, groups=8, eps=1e-5), rnd)
        if lora:
            m = add_lora(m, rnd, ["time_emb_proj"], 2, 2)
        x, temb = leaf(2, cin, 6, 5), leaf(2, 32)
        out = m(x, temb)
        c.add(case, dict(kind="resnet", cin=cin, cout=cout, temb=32, groups=8, eps=1e-5, rank=2 if lora else 0,
                         alpha=2), m, {"x": x, "temb": temb}, out, rnd.n(*out.shape), {"dx": x, "dtemb": temb},
              lora=lora)

    m = add_lora(perturb(BasicTransformerBlock(16, 2, 8, cross_attention_dim=20, activation_fn="geglu",
                                               attention_bias=False), rnd), rnd, TARGETS, 4, 8)
    x, ctx = leaf(2, 12, 16), rnd.n(2, 7, 20)
    out = m(x, encoder_hidden_states=ctx)
    c.add("transformer_block", dict(kind="transformer_block", dim=16, heads=2, dim_head=8, context_dim=20, rank=4,
                                    alpha=8), m, {"x": x, "ctx": ctx}, out, rnd.n(*out.shape), {"dx": x}, lora=True)

    for case, linear in (("transformer2d_conv", False), ("transformer2d_linear", True)):
        m = Transformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=16, cross_attention_dim=20,
                               norm_num_groups=4, use_linear_projection=linear, num_layers=2)
        m = add_lora(perturb(m, rnd), rnd, TARGETS + ["proj_in", "proj_out"], 2, 4)
        x, ctx = leaf(2, 16, 4, 3), rnd.n(2, 7, 20)
        out = m(x, encoder_hidden_states=ctx).sample
        c.add(case, dict(kind="transformer2d", channels=16, heads=2, dim_head=8, context_dim=20, groups=4, layers=2,
                         linear_projection=linear, rank=2, alpha=4), m, {"x": x, "ctx": ctx}, out,
              rnd.n(*out.shape), {"dx": x}, lora=True)

    a, b = leaf(2, 8, 3, 3), leaf(2, 4, 3, 3)
    out = torch.cat([a, b], dim=1)
    c.add("concat", dict(kind="concat", ca=8, cb=4), None, {"a": a, "b": b}, out, rnd.n(*out.shape), {"da": a, "db": b})
    return c


# ------------------------------------------------------------------------------------------------ whole UNets

def peft_unet(unet, rank, alpha, state=None, rnd=None):
    """peft LoRA on the default targets, from an adapter state dict (`unet.`-prefixed keys) or random non-zero."""
    from peft import LoraConfig
    from peft.utils import set_peft_model_state_dict
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, target_modules=TARGETS))
    if state is not None:
        res = set_peft_model_state_dict(unet, {k[len("unet."):]: v for k, v in state.items()})
        assert not res.unexpected_keys, res.unexpected_keys
    else:
        with torch.no_grad():
            for name, p in unet.named_parameters():
                if "lora_" in name:
                    p.copy_(rnd.n(*p.shape, std=0.2))
    for name, p in unet.named_parameters():
        p.requires_grad_("lora_" in name)
    return unet


def unet_grads(unet, x, t, ehs, g, prefix, tensors):
    """Forward with LoRA, backward of sum(out * g); records out, d sample and every LoRA gradient."""
    x = x.clone().requires_grad_(True)
    out = unet(x, t, ehs, return_dict=False)[0]
    lora = [(n.replace(".default", ""), p) for n, p in unet.named_parameters() if "lora_" in n]
    grads = torch.autograd.grad((out * g).sum(), [x] + [p for _, p in lora])
    tensors[f"{prefix}.out"] = out.detach()
    tensors[f"{prefix}.d_sample"] = grads[0]
    for (name, p), gr in zip(lora, grads[1:]):
        assert gr.abs().max() > 0, f"{prefix}: zero gradient for {name}"
        tensors[f"{prefix}.grad.unet.{name}"] = gr
        tensors[f"{prefix}.lora.unet.{name}"] = p.detach()
    return len(lora)


def tiny_unet(assets, rnd, out_dir):
    from diffusers import UNet2DConditionModel
    from safetensors.torch import load_file
    bundle = os.path.join(assets, "tiny-bundle")
    with open(os.path.join(bundle, "unet_config.json")) as f:
        cfg = json.load(f)

    def load():
        u = UNet2DConditionModel.from_config(cfg)
        u.load_state_dict(load_file(os.path.join(bundle, "unet.safetensors")))
        return u.eval()

    x, t, ehs = rnd.n(2, 4, 8, 8), torch.tensor([999.0, 10.5]), rnd.n(2, 77, 32)
    g = rnd.n(2, 4, 8, 8)
    tensors = {"sample": x, "timestep": t, "encoder_hidden_states": ehs, "g": g}
    with torch.no_grad():
        tensors["out_base"] = load()(x, t, ehs, return_dict=False)[0]
    counts = {}
    for name, rank, alpha in (("r4", 4, 4), ("r8", 8, 16)):
        state = load_file(os.path.join(assets, "adapters", f"{name}.safetensors"))
        counts[name] = unet_grads(peft_unet(load(), rank, alpha, state=state), x, t, ehs, g, name, tensors)
        log(f"  unet_tiny {name}: {counts[name]} LoRA tensors, |out - base| max "
            f"{(tensors[f'{name}.out'] - tensors['out_base']).abs().max():.3e}")
    save_tensors(os.path.join(out_dir, "unet_tiny.safetensors"), tensors)
    write_json(os.path.join(out_dir, "unet_tiny.json"), {
        "bundle": "tiny-bundle", "adapters": {"r4": {"rank": 4, "alpha": 4}, "r8": {"rank": 8, "alpha": 16}},
        "lora_tensors": counts, "loss": "sum(out * g)"})


SD2LIKE = dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(8, 16, 16),
               down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
               up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
               cross_attention_dim=12, attention_head_dim=(2, 2, 4), norm_num_groups=4, use_linear_projection=True,
               upcast_attention=True, transformer_layers_per_block=(1, 2, 1), flip_sin_to_cos=False, freq_shift=1,
               norm_eps=1e-5)


def sd2like_unet(rnd, out_dir):
    from diffusers import UNet2DConditionModel
    torch.manual_seed(7)
    unet = perturb(UNet2DConditionModel(**SD2LIKE).eval(), rnd, std=0.03)
    weights = {k: v.detach().clone() for k, v in unet.state_dict().items()}
    save_tensors(os.path.join(out_dir, "unet_sd2like_weights.safetensors"), weights)
    cfg = {k: v for k, v in dict(unet.config).items() if not k.startswith("_")}
    cfg["_class_name"] = "UNet2DConditionModel"
    write_json(os.path.join(out_dir, "unet_sd2like_config.json"), cfg)
    x, t, ehs = rnd.n(2, 4, 5, 7), torch.tensor([500.0, 3.0]), rnd.n(2, 9, 12)
    g = rnd.n(2, 4, 5, 7)
    tensors = {"sample": x, "timestep": t, "encoder_hidden_states": ehs, "g": g}
    with torch.no_grad():
        tensors["out_base"] = unet(x, t, ehs, return_dict=False)[0]
    n = unet_grads(peft_unet(unet, 2, 3, rnd=rnd), x, t, ehs, g, "lora", tensors)
    log(f"  unet_sd2like: {sum(v.numel() for v in weights.values()):,} weights, {n} LoRA tensors (rank 2, alpha 3)")
    save_tensors(os.path.join(out_dir, "unet_sd2like.safetensors"), tensors)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--assets", default=os.path.join(REPO_ROOT, "tests", "assets"))
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    out_dir = os.path.join(os.path.abspath(a.assets), "golden", "trainer")
    os.makedirs(out_dir, exist_ok=True)
    rnd = Rand(20240601)
    c = layer_cases(rnd)
    save_tensors(os.path.join(out_dir, "layers.safetensors"), c.tensors)
    write_json(os.path.join(out_dir, "layers.json"), c.meta)
    log(f"  layers: {len(c.meta)} cases, {len(c.tensors)} tensors")
    tiny_unet(os.path.abspath(a.assets), rnd, out_dir)
    sd2like_unet(rnd, out_dir)
    total = 0
    for fn in sorted(os.listdir(out_dir)):
        size = os.path.getsize(os.path.join(out_dir, fn))
        total += size
        log(f"  {fn:40s} {size:>10,d} B")
    log(f"  total {fmt_size(total)}")


if __name__ == "__main__":
    main()
