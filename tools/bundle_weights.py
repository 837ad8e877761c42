"""Read a bundle's weights back into the torch modules they were exported from.

Why: a shipped model may exist only as its bundle (a training run's checkpoints live in scratch
space), and continuing its training (`train_world_model.py --init-bundle`) needs the text encoder,
UNet and VAE as torch modules again. The UNet is in `unet.safetensors` under diffusers' names. The
text encoder and VAE exist only as ONNX graphs, whose initializers are the weights; but the legacy
exporter renames those it transposes or folds (`onnx::MatMul_123`), so names alone do not lead back
to parameters. The map is found by exporting the same module once more, with every parameter set to
distinct random values, and matching each initializer to the parameter it equals as it is or
transposed. That export is deterministic for one torch version and module structure, so the same
initializer names hold the same parameters in the bundle's graph. Every parameter must be matched,
and the loaded module must then reproduce the bundle's graph under onnxruntime (`check_against`),
or nothing is returned.
"""
import os
import tempfile

import numpy as np
import torch

import export_bundle as eb


def _initializers(path):
    import onnx
    from onnx import numpy_helper
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}


def onnx_param_map(wrapper, example, input_names, output_names, dynamic_axes, prefixes, opset=17):
    """{initializer name: (parameter name, transposed)} for `wrapper` exported as export_bundle does (an
    initializer may also hold the parameter in another shape of the same order, as GroupNorm's (C, 1, 1));
    every parameter whose name starts with one of `prefixes` (the part the graph uses) must be found."""
    params = dict(wrapper.named_parameters())
    g = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for p in params.values():
            p.copy_(torch.randn(p.shape, generator=g))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "probe.onnx")
        eb._export(wrapper, example, path, tmp, input_names, output_names, dynamic_axes, opset)
        inits = _initializers(path)
    by_size = {}
    for name, p in params.items():
        by_size.setdefault(p.numel(), []).append(name)
    mapping, seen = {}, set()
    for iname, arr in inits.items():
        # GroupNorm's affine parameters come out as (C, 1, 1) constants, Linear weights transposed
        for transposed, cand in ((False, arr), (True, arr.T if arr.ndim == 2 else None)):
            if cand is None:
                continue
            flat = cand.reshape(-1)
            hits = [n for n in by_size.get(flat.size, []) if np.array_equal(params[n].detach().numpy().reshape(-1), flat)]
            if hits:
                mapping[iname] = (hits[0], transposed)
                seen.add(hits[0])
                break
    missing = sorted(n for n in params if n.startswith(tuple(prefixes)) and n not in seen)
    if missing:
        raise SystemExit(f"{len(missing)} parameters have no initializer of their own in the export (folded "
                         f"into another tensor?): {missing[:5]}. Fix: extend bundle_weights.onnx_param_map")
    return mapping


def load_from_onnx(wrapper, onnx_path, mapping):
    """Copy the initializers of `onnx_path` named in `mapping` into `wrapper`'s parameters."""
    inits = _initializers(onnx_path)
    params = dict(wrapper.named_parameters())
    absent = [n for n in mapping if n not in inits]
    if absent:
        raise SystemExit(f"{onnx_path} lacks initializers {absent[:5]}: it was not exported from this module "
                         f"structure with this torch version. Fix: export the bundle again with tools/export_bundle.py")
    with torch.no_grad():
        for iname, (pname, transposed) in mapping.items():
            arr = inits[iname].T if transposed else inits[iname]
            params[pname].copy_(torch.from_numpy(np.array(arr)).reshape(params[pname].shape))


def check_against(wrapper, onnx_path, feeds, tol=1e-5):
    """max |onnxruntime(onnx_path) - torch(wrapper)| over the outputs, raising if above tol x scale."""
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])
    got = sess.run(None, {k: v.numpy() for k, v in feeds.items()})
    with torch.no_grad():
        ref = wrapper(*feeds.values())
    ref = ref if isinstance(ref, tuple) else (ref,)
    worst = 0.0
    for g_, r in zip(got, ref):
        r = r.detach().float().numpy()
        d = float(np.abs(g_ - r).max())
        if d > tol * max(1.0, float(np.abs(r).max())):
            raise SystemExit(f"{onnx_path}: the loaded torch module differs from the graph by {d:.3e}")
        worst = max(worst, d)
    return worst


def load_bundle(bundle_dir, unet, te, vae, max_length):
    """Fill `unet`, `te` (CLIPTextModel) and `vae` (AutoencoderKL), built with the bundle's configs, from
    `bundle_dir`; returns {graph: max |onnx - torch|} of the checks."""
    from safetensors.torch import load_file
    sd = load_file(os.path.join(bundle_dir, "unet.safetensors"))
    unet.load_state_dict({k: v.float() for k, v in sd.items()})
    worst = {}
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(0, te.config.vocab_size, (2, max_length), generator=g, dtype=torch.int64)
    parts = [
        ("text_encoder.onnx", eb._TextEncoder(te).eval(), {"input_ids": ids}, ["last_hidden_state"],
         {"input_ids": {0: "batch"}, "last_hidden_state": {0: "batch"}}, [""]),
        ("vae_decoder.onnx", eb._VaeDecoder(vae).eval(),
         {"latent_sample": torch.randn(2, vae.config.latent_channels, 8, 8, generator=g)}, ["sample"],
         {"latent_sample": {0: "batch", 2: "height", 3: "width"}, "sample": {0: "batch", 2: "image_height",
                                                                              3: "image_width"}},
         ["vae.decoder.", "vae.post_quant_conv."]),
        ("vae_encoder.onnx", eb._VaeEncoder(vae).eval(),
         {"sample": torch.rand(2, 3, 16, 16, generator=g) * 2 - 1}, ["latent_mean", "latent_logvar"],
         {"sample": {0: "batch", 2: "image_height", 3: "image_width"}, "latent_mean": {0: "batch", 2: "height",
                                                                                       3: "width"},
          "latent_logvar": {0: "batch", 2: "height", 3: "width"}}, ["vae.encoder.", "vae.quant_conv."]),
    ]
    # the decoder's and encoder's maps are found before any weights are loaded: each probe export
    # overwrites every parameter of the shared VAE
    maps = [onnx_param_map(w, tuple(f.values()), list(f), outs, dyn, pre) for _, w, f, outs, dyn, pre in parts]
    for (fname, w, *_), m in zip(parts, maps):
        load_from_onnx(w, os.path.join(bundle_dir, fname), m)
    for fname, w, feeds, *_ in parts:
        worst[fname] = check_against(w, os.path.join(bundle_dir, fname), feeds)
    unet.eval()
    c = unet.config
    feeds = {"sample": torch.randn(2, c.in_channels, 8, 8, generator=g), "timestep": torch.tensor([999.0, 10.0]),
             "encoder_hidden_states": torch.randn(2, max_length, c.cross_attention_dim, generator=g)}
    worst["unet.onnx"] = check_against(lambda *a: unet(*a).sample, os.path.join(bundle_dir, "unet.onnx"), feeds)
    return worst
