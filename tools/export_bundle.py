"""Turn a local diffusers Stable Diffusion 1.x/2.x pipeline folder into a dpoimg model bundle.

Usage:
    python tools/export_bundle.py DIFFUSERS_DIR OUT_DIR [--dtype fp32|fp16] [--name NAME]
        [--lora-targets to_q,to_k,to_v,to_out.0] [--opset 17] [--architecture sd1|sd2]
        [--width W] [--height H] [--steps N] [--guidance G] [--sampler ddim] [--tol T]

DIFFUSERS_DIR is what `StableDiffusionPipeline.save_pretrained` writes (unet/, vae/, text_encoder/,
tokenizer/, scheduler/). Nothing is downloaded. OUT_DIR receives (see docs/formats.md, "Model bundle v1"):

    text_encoder.onnx   input_ids int64 [B,77] -> last_hidden_state f32 [B,77,hidden]
    tokenizer.json      the CLIP BPE tokenizer in Hugging Face `tokenizers` format
    unet.onnx           sample/timestep/encoder_hidden_states -> out_sample, plus one optional input per
                        LoRA tensor (`<module>.lora_A.weight` [lora_rank,in], `<module>.lora_B.weight`
                        [out,lora_rank], zero-rank defaults, alpha == rank); unet.onnx.data when > 2 GB
    unet_config.json    unet/config.json verbatim
    unet.safetensors    the UNet state dict under diffusers names (for the trainer)
    vae_decoder.onnx    latent_sample -> sample; vae_encoder.onnx sample -> latent_mean, latent_logvar
    bundle.json         written last, only after every ONNX file matched torch under onnxruntime

Why the LoRA design: feeding adapter tensors as ordinary graph inputs lets one ONNX Runtime session
serve any adapter (or several, concatenated along the rank axis with alpha/rank x strength folded into
B) without re-exporting or merging weights; zero-rank initializers make "no adapter" the base model.

Why the legacy (TorchScript) exporter at opset 17: it is fast, gives small graphs and handles the
LoRA hooks below; the dynamo exporter needs opset >= 18 and argument-named dynamic shapes.

--dtype fp16 exports the fp32 graphs and then converts their weights and arithmetic to fp16 with
onnxruntime.transformers.float16 (keep_io_types: graph inputs/outputs, LoRA inputs included, stay f32; casting
the torch model to half instead gives graphs that mix float and float16 and do not load). The VAE stays fp32
when its config says `force_upcast` (the SD VAEs overflow in fp16; diffusers upcasts them too).
unet.safetensors is written in the bundle dtype.
bundle.json is strict JSON: a non-finite number in scheduler_config.json (diffusers writes -Infinity for
DPMSolverMultistepScheduler's lambda_min_clipped) is stored as the string "-inf" / "inf" / "nan".
Validation tolerance: max|onnx - torch| <= tol x max(1, max|torch|), tol = 1e-4 (fp32) / 2e-2 (fp16),
the fp16 graphs being compared with the fp32 torch model.
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402  (sets offline mode before any Hugging Face import)
from _common import DEFAULT_LORA_TARGETS, lora_target_modules, max_abs_diff, sha256_file, write_json  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

# Files this tool owns inside OUT_DIR; removed first so that a re-run never leaves a stale one behind.
OWNED_FILES = ("bundle.json", "text_encoder.onnx", "text_encoder.onnx.data", "tokenizer.json", "unet.onnx",
               "unet.onnx.data", "unet_config.json", "unet.safetensors", "vae_decoder.onnx",
               "vae_decoder.onnx.data", "vae_encoder.onnx", "vae_encoder.onnx.data")
# protobuf cannot serialise a message over 2 GiB; stay clear of it.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000


class _TextEncoder(torch.nn.Module):
    """input_ids -> last_hidden_state (the only output SD conditioning uses)."""

    def __init__(self, te):
        super().__init__()
        self.te = te

    def forward(self, input_ids):
        return self.te(input_ids=input_ids, return_dict=True).last_hidden_state


class _UNetWithLoraInputs(torch.nn.Module):
    """forward(sample, timestep, encoder_hidden_states, A_0, B_0, A_1, B_1, ...) -> out_sample.

    A forward hook on every target Linear adds `x @ A^T @ B^T` (peft's LoRA with alpha == rank and no
    dropout) using the tensors of the current call. Hooks keep the UNet's own modules and parameter names
    untouched, and under tracing the added ops hang off graph inputs, so constant folding cannot erase
    them (it does when LoRA weights are initializers). Outside a call the hooks are no-ops.
    """

    def __init__(self, unet, modules):
        super().__init__()
        self.unet = unet
        self._lora = None
        self._handles = [m.register_forward_hook(self._hook(i)) for i, (_, m) in enumerate(modules)]

    def _hook(self, idx):
        def hook(_module, inputs, output):
            if not self._lora:
                return output
            a, b = self._lora[2 * idx], self._lora[2 * idx + 1]
            return output + torch.nn.functional.linear(torch.nn.functional.linear(inputs[0], a), b)
        return hook

    def forward(self, sample, timestep, encoder_hidden_states, *lora):
        self._lora = lora
        try:
            return self.unet(sample, timestep, encoder_hidden_states, return_dict=False)[0]
        finally:
            self._lora = None

    def remove_hooks(self):
        for h in self._handles:
            h.remove()


class _VaeDecoder(torch.nn.Module):
    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, latent_sample):
        return self.vae.decode(latent_sample, return_dict=False)[0]


class _VaeEncoder(torch.nn.Module):
    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, sample):
        dist = self.vae.encode(sample, return_dict=False)[0]
        return dist.mean, dist.logvar


def _finalize_onnx(raw_path, final_path, extra_initializers=(), fp16=False):
    """Load a freshly exported graph, optionally convert it to fp16, append initializers, and save it to
    `final_path`, moving weights to `<file>.data` beside it (relative location) when the model is too big for
    one protobuf. The legacy exporter itself scatters >2 GB models into one file per tensor, hence the export
    into a temp dir. The LoRA default initializers are added after the fp16 conversion so that they stay f32
    like the graph inputs they stand in for."""
    import onnx
    from onnx import numpy_helper
    if fp16:
        from onnxruntime.transformers.float16 import convert_float_to_float16
        # in-memory shape inference cannot handle > 2 GB protobufs; the path-based one can
        inferred = raw_path + ".inferred.onnx"
        onnx.shape_inference.infer_shapes_path(raw_path, inferred)
        model = convert_float_to_float16(onnx.load(inferred), keep_io_types=True, disable_shape_infer=True)
    else:
        model = onnx.load(raw_path)
    for name, arr in extra_initializers:
        model.graph.initializer.append(numpy_helper.from_array(arr, name))
    weight_bytes = sum(len(t.raw_data) if t.raw_data else 0 for t in model.graph.initializer)
    external = weight_bytes > EXTERNAL_DATA_THRESHOLD
    if external:
        onnx.save_model(model, final_path, save_as_external_data=True, all_tensors_to_one_file=True,
                        location=os.path.basename(final_path) + ".data", size_threshold=1024)
    else:
        onnx.save_model(model, final_path)
    files = [os.path.basename(final_path)] + ([os.path.basename(final_path) + ".data"] if external else [])
    return files


def _export(module, args, path, tmpdir, input_names, output_names, dynamic_axes, opset, extra_initializers=(),
            fp16=False):
    raw = os.path.join(tmpdir, os.path.basename(path))
    with torch.no_grad():
        torch.onnx.export(module, args, raw, input_names=input_names, output_names=output_names,
                          dynamic_axes=dynamic_axes, opset_version=opset, do_constant_folding=True, dynamo=False)
    return _finalize_onnx(raw, path, extra_initializers, fp16)


def _validate(label, path, cases, refs, tol):
    """Run every case under onnxruntime (CPU) and compare with the torch reference outputs."""
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    out_names = [o.name for o in sess.get_outputs()]
    worst = 0.0
    for (desc, feeds), ref in zip(cases, refs):
        got = sess.run(out_names, feeds)
        diffs = [max_abs_diff(g, r) for g, r in zip(got, ref)]
        scale = max(1.0, max(float(np.abs(r).max()) for r in ref))
        ok = all(d <= tol * scale for d in diffs)
        print(f"  validate {label:13s} {desc:44s} max|onnx-torch| = {max(diffs):.3e}"
              f" (limit {tol * scale:.1e}) {'OK' if ok else 'FAIL'}")
        if not ok:
            raise SystemExit(f"{label}: onnxruntime output differs from torch by {max(diffs):.3e} ({desc})")
        worst = max(worst, max(diffs))
    return worst


def _torch_refs(module, cases_torch):
    refs = []
    with torch.no_grad():
        for args in cases_torch:
            out = module(*args)
            out = out if isinstance(out, tuple) else (out,)
            refs.append([o.detach().float().numpy().copy() for o in out])
    return refs


def export_bundle(diffusers_dir, out_dir, dtype="fp32", name=None, lora_targets=DEFAULT_LORA_TARGETS, opset=17,
                  architecture=None, width=None, height=None, steps=None, guidance=7.5, sampler="ddim",
                  tol=None):
    """Export `diffusers_dir` into the bundle directory `out_dir`; returns the bundle.json dict."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizerFast

    t_all = time.time()
    half = dtype == "fp16"
    if dtype not in ("fp32", "fp16"):
        raise SystemExit(f"--dtype must be fp32 or fp16, not {dtype!r}")
    tol = tol if tol is not None else (2e-2 if half else 1e-4)
    wdtype = torch.float16 if half else torch.float32  # of unet.safetensors
    lora_targets = tuple(lora_targets)
    os.makedirs(out_dir, exist_ok=True)
    for f in OWNED_FILES:
        if os.path.exists(os.path.join(out_dir, f)):
            os.remove(os.path.join(out_dir, f))

    torch.manual_seed(0)  # validation inputs below are random; keep runs reproducible
    sub = lambda s: os.path.join(diffusers_dir, s)  # noqa: E731
    unet = UNet2DConditionModel.from_pretrained(diffusers_dir, subfolder="unet", torch_dtype=torch.float32).eval()
    vae = AutoencoderKL.from_pretrained(diffusers_dir, subfolder="vae", torch_dtype=torch.float32).eval()
    te = CLIPTextModel.from_pretrained(sub("text_encoder"), torch_dtype=torch.float32).eval()
    tok = CLIPTokenizerFast.from_pretrained(sub("tokenizer"))
    with open(sub("scheduler/scheduler_config.json"), encoding="utf-8") as f:
        scheduler_config = json.load(f)
    ucfg, vcfg, tcfg = unet.config, vae.config, te.config
    max_length = tok.model_max_length if tok.model_max_length <= 4096 else tcfg.max_position_embeddings
    hidden = tcfg.hidden_size
    if architecture is None:
        # SD-2 conditions on OpenCLIP ViT-H (1024 wide); SD-1 on CLIP ViT-L (768) -- and so do tiny test models.
        architecture = "sd2" if ucfg.cross_attention_dim == 1024 else "sd1"
    tiny = hidden < 768
    sample_multiple = 2 ** (len(ucfg.block_out_channels) - 1)
    vae_factor = 2 ** (len(vcfg.block_out_channels) - 1)
    vae_half = half and not getattr(vcfg, "force_upcast", True)
    print(f"[export] {diffusers_dir} -> {out_dir}: architecture {architecture}, dtype {dtype}, UNet "
          f"{sum(p.numel() for p in unet.parameters()):,} params, text hidden {hidden}, "
          f"sample_multiple {sample_multiple}, VAE factor {vae_factor}{' (fp32: force_upcast)' if half and not vae_half else ''}")
    files = []

    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".export-") as tmp:
        # ---- tokenizer -------------------------------------------------------------------------------
        tok.backend_tokenizer.save(os.path.join(out_dir, "tokenizer.json"), pretty=False)  # compact: 2/3 the size
        files.append("tokenizer.json")
        _check_tokenizer_file(os.path.join(out_dir, "tokenizer.json"), tok, max_length)

        # ---- text encoder ----------------------------------------------------------------------------
        t0 = time.time()
        mod = _TextEncoder(te).eval()
        ids2 = tok(["", "a photo of a cat"], padding="max_length", max_length=max_length, truncation=True,
                   return_tensors="pt").input_ids.to(torch.int64)
        ids3 = torch.randint(0, tcfg.vocab_size, (3, max_length), dtype=torch.int64)
        cases = [(ids2,), (ids3,)]
        refs = _torch_refs(mod, cases)
        path = os.path.join(out_dir, "text_encoder.onnx")
        files += _export(mod, cases[0], path, tmp, ["input_ids"], ["last_hidden_state"],
                         {"input_ids": {0: "batch"}, "last_hidden_state": {0: "batch"}}, opset, fp16=half)
        _validate("text_encoder", path, [("tokenized ['', 'a photo of a cat']", {"input_ids": ids2.numpy()}),
                                         ("random ids, batch 3", {"input_ids": ids3.numpy()})], refs, tol)
        print(f"  text_encoder.onnx in {time.time() - t0:.1f}s")

        # ---- UNet with LoRA inputs ------------------------------------------------------------------
        t0 = time.time()
        shutil.copyfile(sub("unet/config.json"), os.path.join(out_dir, "unet_config.json"))
        files.append("unet_config.json")
        _save_state_dict(unet, os.path.join(out_dir, "unet.safetensors"), wdtype)
        files.append("unet.safetensors")
        modules = lora_target_modules(unet, lora_targets)
        if not modules:
            raise SystemExit(f"no UNet module ends with one of {lora_targets}")
        path = os.path.join(out_dir, "unet.onnx")
        unet_files, effect = export_unet(unet, modules, max_length, path, tmp, opset, tol, fp16=half)
        files += unet_files
        print(f"  unet.onnx in {time.time() - t0:.1f}s: {len(modules)} LoRA modules, test adapter moves "
              f"the output by {effect:.3e}")

        # ---- VAE --------------------------------------------------------------------------------------
        t0 = time.time()
        L = vcfg.latent_channels
        dec, enc = _VaeDecoder(vae).eval(), _VaeEncoder(vae).eval()
        dcases = [(torch.randn(2, L, 8, 8),), (torch.randn(1, L, 6, 4),)]
        ecases = [(torch.rand(2, 3, 8 * vae_factor, 8 * vae_factor) * 2 - 1,),
                  (torch.rand(1, 3, 6 * vae_factor, 4 * vae_factor) * 2 - 1,)]
        drefs, erefs = _torch_refs(dec, dcases), _torch_refs(enc, ecases)
        path = os.path.join(out_dir, "vae_decoder.onnx")
        files += _export(dec, dcases[0], path, tmp, ["latent_sample"], ["sample"],
                         {"latent_sample": {0: "batch", 2: "height", 3: "width"},
                          "sample": {0: "batch", 2: "image_height", 3: "image_width"}}, opset, fp16=vae_half)
        _validate("vae_decoder", path, [(f"latents {tuple(c[0].shape)}", {"latent_sample": c[0].numpy()})
                                        for c in dcases], drefs, tol)
        path = os.path.join(out_dir, "vae_encoder.onnx")
        files += _export(enc, ecases[0], path, tmp, ["sample"], ["latent_mean", "latent_logvar"],
                         {"sample": {0: "batch", 2: "image_height", 3: "image_width"},
                          "latent_mean": {0: "batch", 2: "height", 3: "width"},
                          "latent_logvar": {0: "batch", 2: "height", 3: "width"}}, opset, fp16=vae_half)
        _validate("vae_encoder", path, [(f"images {tuple(c[0].shape)}", {"sample": c[0].numpy()})
                                        for c in ecases], erefs, tol)
        print(f"  vae_decoder.onnx + vae_encoder.onnx in {time.time() - t0:.1f}s")

    default_size = int(vcfg.sample_size)
    bundle = {
        "format": "dpoimg-bundle",
        "version": 1,
        "name": name or os.path.basename(os.path.normpath(diffusers_dir)),
        "architecture": architecture,
        "text_encoder": {
            "onnx": "text_encoder.onnx",
            "tokenizer": "tokenizer.json",
            "max_length": int(max_length),
            "pad_id": int(tok.pad_token_id),
            "hidden_size": int(hidden),
        },
        "unet": {
            "onnx": "unet.onnx",
            "config": "unet_config.json",
            "weights": "unet.safetensors",
            "in_channels": int(ucfg.in_channels),
            "cross_attention_dim": int(ucfg.cross_attention_dim),
            "sample_multiple": 1,
            "lora": {
                "targets": list(lora_targets),
                "modules": [{"name": n, "in_features": m.in_features, "out_features": m.out_features}
                            for n, m in modules],
            },
        },
        "vae": {
            "decoder": "vae_decoder.onnx",
            "encoder": "vae_encoder.onnx",
            "scaling_factor": float(vcfg.scaling_factor),
            "shift_factor": None if getattr(vcfg, "shift_factor", None) is None else float(vcfg.shift_factor),
            "downsample_factor": vae_factor,
            "latent_channels": int(L),
        },
        "scheduler": scheduler_config,
        "defaults": {
            "width": int(width or default_size),
            "height": int(height or default_size),
            "steps": int(steps or (20 if tiny else 25)),
            "guidance": float(guidance),
            "sampler": sampler,
        },
        "files": {f: sha256_file(os.path.join(out_dir, f)) for f in sorted(set(files))},
    }
    write_json(os.path.join(out_dir, "bundle.json"), bundle, indent=2)
    for f in list(bundle["files"]) + ["bundle.json"]:
        os.chmod(os.path.join(out_dir, f), 0o644)  # onnx/safetensors write some files 0600
    total = sum(os.path.getsize(os.path.join(out_dir, f)) for f in bundle["files"])
    print(f"[export] bundle.json written ({len(bundle['files'])} files, {total:,} B) in {time.time() - t_all:.1f}s")
    return bundle


def export_unet(unet, modules, max_length, path, tmpdir, opset, tol, fp16=False):
    """`unet` as an ONNX graph at `path` with LoRA inputs for `modules` (lora_target_modules order),
    checked against torch with and without LoRA feeds at three latent sizes; returns (the files
    written, relative to path's folder; how far a rank-3 test adapter moves the output)."""
    ucfg = unet.config
    sample_multiple = 2 ** (len(ucfg.block_out_channels) - 1)
    lora_names, lora_zero, dyn = lora_graph_inputs(modules)
    wrapper = _UNetWithLoraInputs(unet, modules).eval()
    C, X = ucfg.in_channels, ucfg.cross_attention_dim
    # The example latent side is NOT a multiple of the UNet's overall up factor: diffusers then
    # passes each skip connection's size to the upsamplers (`forward_upsample_size`), and the
    # traced graph resizes to those sizes instead of a fixed 2x. That graph is exact for every
    # latent size, so images need only be multiples of the VAE factor (`sample_multiple` = 1).
    h = 4 * sample_multiple + 1
    # Export with a small non-zero rank so that the traced graph keeps the LoRA branch.
    lora_ex = _random_lora(modules, rank=2, scale=0.2, seed=1)
    lora_val = _random_lora(modules, rank=3, scale=0.3, seed=2)
    ex = (torch.randn(2, C, h, h), torch.tensor([999.0, 10.5]), torch.randn(2, max_length, X))
    alt = (torch.randn(1, C, 2 * sample_multiple, 3 * sample_multiple), torch.tensor([500.0]),
           torch.randn(1, max_length, X))
    odd = (torch.randn(1, C, 3 * sample_multiple - 1, 2 * sample_multiple + 3), torch.tensor([250.0]),
           torch.randn(1, max_length, X))
    refs = _torch_refs(wrapper, [ex, (*alt, *lora_val), (*ex, *lora_val), odd])
    effect = max_abs_diff(refs[2][0], refs[0][0])
    dyn.update({"sample": {0: "batch", 2: "height", 3: "width"}, "timestep": {0: "batch"},
                "encoder_hidden_states": {0: "batch"}, "out_sample": {0: "batch", 2: "height", 3: "width"}})
    files = _export(wrapper, (*ex, *lora_ex), path, tmpdir,
                    ["sample", "timestep", "encoder_hidden_states", *lora_names], ["out_sample"], dyn, opset,
                    extra_initializers=lora_zero, fp16=fp16)
    base = ["sample", "timestep", "encoder_hidden_states"]
    lora_feed = {n: t.numpy() for n, t in zip(lora_names, lora_val)}
    _validate("unet", path, [
        (f"no LoRA feeds, {tuple(ex[0].shape)}", dict(zip(base, (t.numpy() for t in ex)))),
        (f"rank-3 LoRA feeds, {tuple(alt[0].shape)}", dict(zip(base, (t.numpy() for t in alt)), **lora_feed)),
        (f"rank-3 LoRA feeds, {tuple(ex[0].shape)}", dict(zip(base, (t.numpy() for t in ex)), **lora_feed)),
        (f"no LoRA feeds, {tuple(odd[0].shape)}", dict(zip(base, (t.numpy() for t in odd)))),
    ], refs, tol)
    wrapper.remove_hooks()
    return files, effect


def lora_graph_inputs(modules):
    """The UNet graph's LoRA inputs for `modules` ([(name, nn.Linear)]): their names
    (`<module>.lora_A.weight`, `<module>.lora_B.weight`, in module order), zero-rank default
    initializers, and dynamic axes (the rank)."""
    names, zeros, dyn = [], [], {}
    for mname, lin in modules:
        for part, shape, axis in (("lora_A", (0, lin.in_features), 0), ("lora_B", (lin.out_features, 0), 1)):
            n = f"{mname}.{part}.weight"
            names.append(n)
            zeros.append((n, np.zeros(shape, np.float32)))
            dyn[n] = {axis: "lora_rank"}
    return names, zeros, dyn


def _random_lora(modules, rank, scale, seed):
    """[A_0, B_0, A_1, ...] with A ~ N(0, 1/in) and B ~ N(0, scale^2/rank): the LoRA branch then adds about
    `scale` x the input's per-feature magnitude whatever the layer width, a clearly visible but realistic
    change (fixed-std weights would blow up the activations of 1280-wide SD layers and, in fp16, the error)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _, lin in modules:
        out.append(torch.randn(rank, lin.in_features, generator=g) / lin.in_features ** 0.5)
        out.append(torch.randn(lin.out_features, rank, generator=g) * (scale / rank ** 0.5))
    return out


def _save_state_dict(module, path, dtype):
    """The trainer reads these, so they carry diffusers' own parameter names, in the bundle's dtype."""
    from safetensors.torch import save_file
    save_file({k: v.detach().to(dtype).contiguous() for k, v in module.state_dict().items()}, path,
              metadata={"format": "pt"})


def _check_tokenizer_file(path, tok, max_length):
    """The file the Rust side reads must tokenize exactly like transformers' tokenizer object."""
    from tokenizers import Tokenizer
    raw = Tokenizer.from_file(path)
    for p in ("a photo of a cat", "A RED circle, above a blue square!!", ""):
        want = tok(p, truncation=True, max_length=max_length).input_ids
        got = raw.encode(p).ids[:max_length]
        if got != want:
            raise SystemExit(f"tokenizer.json disagrees with transformers on {p!r}: {got} vs {want}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("diffusers_dir")
    ap.add_argument("out_dir")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "fp16"])
    ap.add_argument("--name", default=None, help="bundle name (default: the folder name)")
    ap.add_argument("--lora-targets", default=",".join(DEFAULT_LORA_TARGETS),
                    help="comma-separated module-name suffixes that get LoRA inputs")
    ap.add_argument("--opset", type=int, default=17)
    ap.add_argument("--architecture", choices=["sd1", "sd2"], default=None,
                    help="default: sd2 when cross_attention_dim == 1024, else sd1")
    ap.add_argument("--width", type=int, default=None, help="default: vae sample_size")
    ap.add_argument("--height", type=int, default=None, help="default: vae sample_size")
    ap.add_argument("--steps", type=int, default=None, help="default: 20 for tiny test models, 25 otherwise")
    ap.add_argument("--guidance", type=float, default=7.5)
    ap.add_argument("--sampler", default="ddim", choices=sorted(_common.SAMPLERS))
    ap.add_argument("--tol", type=float, default=None, help="validation tolerance (default 1e-4 fp32, 2e-2 fp16)")
    a = ap.parse_args(argv)
    export_bundle(a.diffusers_dir, a.out_dir, dtype=a.dtype, name=a.name,
                  lora_targets=[t.strip() for t in a.lora_targets.split(",") if t.strip()], opset=a.opset,
                  architecture=a.architecture, width=a.width, height=a.height, steps=a.steps,
                  guidance=a.guidance, sampler=a.sampler, tol=a.tol)


if __name__ == "__main__":
    main()
