"""ImageReward → dpoimg reward bundle (`reward.json`, docs/formats.md), and the tiny test model + goldens.

    # a real checkpoint (ImageReward.pt + med_config.json from THUDM/ImageReward, and a local
    # bert-base-uncased folder with vocab.txt: the package would fetch it from the hub)
    python tools/export_imagereward.py --checkpoint ImageReward.pt --med-config med_config.json \
        --bert DIR_WITH_VOCAB_TXT OUT_DIR

    # the tiny random-initialised model of the same architecture, and goldens from the package's score()
    python tools/export_imagereward.py --tiny [--assets tests/assets]

The model is the `image-reward` package's own classes (BLIP `VisionTransformer` + BLIP `BertModel` with
cross-attention + `MLP`), imported without the package's `__init__` (which pulls the `clip` package for
its baselines). transformers 5 moved or dropped three helpers BLIP's med.py imports from `modeling_utils`:
`apply_chunking_to_forward` is re-exposed from `pytorch_utils` (same function), the head-pruning helpers
(never called for ImageReward) become functions that raise, and `get_head_mask` (gone from
PreTrainedModel) returns `[None] * layers` for `head_mask=None`, what transformers 4 returned.

The ONNX graph computes exactly `ImageReward.score_gard` up to the raw MLP output:
  pixel_values [B,3,S,S] f32 (preprocessed), input_ids [B,L] i64, attention_mask [B,L] i64 → raw_score [B]
and dpoimg applies `(raw − mean) / std` from reward.json, as `ImageReward.score` does.
"""
import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402  (offline mode first)

IMAGE_SIZE = 224
MAX_LENGTH = 35
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
SCORE_MEAN = 0.16717362830052426
SCORE_STD = 1.0333394966054072

# The tiny model's prompts (goldens) and the words its vocabulary knows; other words become
# WordPiece pieces or [UNK], which the goldens exercise too.
TINY_PROMPTS = [
    "a red circle above a blue square",
    "A photo of an astronaut riding a horse, highly detailed!",
    "",
    "unseenword zebra qqq " + "long " * 40,
]
TINY_WORDS = ("a red circle above blue square photo of an astronaut riding horse highly detailed the cat dog "
              "long green on in with").split()


def _unused(name):
    """transformers 5 dropped the head-pruning helpers; ImageReward never prunes heads."""
    def f(*_a, **_k):
        raise NotImplementedError(f"{name}: head pruning is not supported here (ImageReward never calls it)")
    return f


def import_imagereward():
    """(ImageReward module, VisionTransformer, BertConfig, BertModel) from the installed package."""
    import importlib.util
    import types
    import transformers.modeling_utils as mu
    import transformers.pytorch_utils as pu
    for name in ("apply_chunking_to_forward", "find_pruneable_heads_and_indices", "prune_linear_layer"):
        if not hasattr(mu, name):
            setattr(mu, name, getattr(pu, name, None) or _unused(name))
    spec = importlib.util.find_spec("ImageReward")
    if spec is None:
        sys.exit("the image-reward package is missing: pip install --no-deps image-reward==1.5 timm fairscale")
    base = list(spec.submodule_search_locations)[0]
    for name, path in (("ImageReward", base), ("ImageReward.models", os.path.join(base, "models"))):
        if name not in sys.modules:
            m = types.ModuleType(name)
            m.__path__ = [path]
            sys.modules[name] = m
    import ImageReward.ImageReward as IR
    from ImageReward.models.BLIP.vit import VisionTransformer
    from ImageReward.models.BLIP.med import BertConfig, BertModel
    import ImageReward.models.BLIP.blip_pretrain as bp
    import ImageReward.models.BLIP.med as med
    # transformers 5's init_weights() reads this (set by post_init, which BLIP's BertModel never calls);
    # BLIP ties no weights.
    if not hasattr(med.BertPreTrainedModel, "all_tied_weights_keys"):
        med.BertPreTrainedModel.all_tied_weights_keys = {}
    if not hasattr(med.BertPreTrainedModel, "invert_attention_mask"):
        med.BertPreTrainedModel.invert_attention_mask = _invert_attention_mask
    if not hasattr(med.BertPreTrainedModel, "get_head_mask"):
        med.BertPreTrainedModel.get_head_mask = _get_head_mask
    return IR, VisionTransformer, BertConfig, BertModel, bp


def _invert_attention_mask(self, mask):
    """transformers 4's ModuleUtilsMixin.invert_attention_mask (gone in 5): 1 → 0, 0 → dtype min."""
    import torch
    ext = mask[:, None, :, :] if mask.dim() == 3 else mask[:, None, None, :]
    ext = ext.to(dtype=self.dtype)
    return (1.0 - ext) * torch.finfo(self.dtype).min


def _get_head_mask(self, head_mask, num_layers):
    """transformers 4's get_head_mask for the only case ImageReward uses (no head mask)."""
    if head_mask is not None:
        raise ValueError("head_mask is not supported")
    return [None] * num_layers


def blip_tokenizer(source):
    """BLIP's `init_tokenizer()` on a local bert-base-uncased folder or vocab.txt (the package calls
    from_pretrained('bert-base-uncased'), a hub download). transformers 5 silently ignores `vocab_file=`
    (the tokenizer comes out empty, all [UNK]); `vocab=` is the argument it reads."""
    from transformers import BertTokenizer
    if os.path.isdir(source):
        tok = BertTokenizer.from_pretrained(source)
    else:
        tok = BertTokenizer(vocab=source, do_lower_case=True)
    if len(tok) < 6:
        sys.exit(f"{source}: the tokenizer came out with {len(tok)} tokens; expected a BERT vocabulary")
    tok.add_special_tokens({"bos_token": "[DEC]"})
    tok.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    tok.enc_token_id = tok.convert_tokens_to_ids("[ENC]")
    return tok


def make_graph(model):
    import torch

    class Graph(torch.nn.Module):
        def __init__(self, ir):
            super().__init__()
            self.ir = ir

        def forward(self, pixel_values, input_ids, attention_mask):
            image_embeds = self.ir.blip.visual_encoder(pixel_values)
            image_atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long)
            out = self.ir.blip.text_encoder(input_ids, attention_mask=attention_mask,
                                            encoder_hidden_states=image_embeds,
                                            encoder_attention_mask=image_atts, return_dict=True)
            return self.ir.mlp(out.last_hidden_state[:, 0, :].float()).squeeze(-1)

    return Graph(model).eval()


def export_onnx(model, path, opset=17):
    import onnx
    import torch
    graph = make_graph(model)
    px = torch.zeros(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    ids = torch.zeros(2, MAX_LENGTH, dtype=torch.long)
    mask = torch.ones(2, MAX_LENGTH, dtype=torch.long)
    with tempfile.TemporaryDirectory() as td:
        raw = os.path.join(td, "m.onnx")
        with torch.no_grad():
            torch.onnx.export(graph, (px, ids, mask), raw, input_names=["pixel_values", "input_ids", "attention_mask"],
                              output_names=["raw_score"],
                              dynamic_axes={"pixel_values": {0: "batch"}, "input_ids": {0: "batch"},
                                            "attention_mask": {0: "batch"}, "raw_score": {0: "batch"}},
                              opset_version=opset, do_constant_folding=True, dynamo=False)
        m = onnx.load(raw, load_external_data=True)
        big = sum(t.ByteSize() for t in m.graph.initializer) > (1 << 30)
        if big:
            onnx.save(m, path, save_as_external_data=True, all_tensors_to_one_file=True,
                      location=os.path.basename(path) + ".data")
        else:
            onnx.save(m, path)
    return graph


def write_tokenizer(tok, path):
    tok.backend_tokenizer.save(path)


def write_manifest(out_dir, name, files, tok, extra=None):
    manifest = {
        "format": "dpoimg-reward",
        "version": 1,
        "kind": "imagereward",
        "name": name,
        "onnx": "model.onnx",
        "tokenizer": "tokenizer.json",
        "text": {"max_length": MAX_LENGTH, "pad_id": int(tok.pad_token_id)},
        "preprocess": {"resize": "bicubic", "size": IMAGE_SIZE, "crop": "center", "mean": list(MEAN), "std": list(STD)},
        "score": {"mean": SCORE_MEAN, "std": SCORE_STD},
        "files": {f: _common.sha256_file(os.path.join(out_dir, f)) for f in sorted(files)},
    }
    if extra:
        manifest.update(extra)
    _common.write_json(os.path.join(out_dir, "reward.json"), manifest)


def check_against_torch(model, onnx_path, tok, images, prompt, tol):
    """ORT on the exported graph vs the package's own score() path."""
    import numpy as np
    import onnxruntime as ort
    import torch
    want = np.array(model.score(prompt, images), dtype=np.float64)
    t = tok(prompt, padding="max_length", truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
    px = torch.stack([model.preprocess(im) for im in images]).numpy()
    n = len(images)
    sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    raw = sess.run(["raw_score"], {"pixel_values": px, "input_ids": t.input_ids.repeat(n, 1).numpy(),
                                   "attention_mask": t.attention_mask.repeat(n, 1).numpy()})[0]
    got = (raw.astype(np.float32) - np.float32(SCORE_MEAN)) / np.float32(SCORE_STD)
    diff = float(np.max(np.abs(got - want)))
    print(f"onnx vs ImageReward.score: max|diff| = {diff:.3g} (tol {tol})")
    if diff > tol:
        sys.exit("exported graph disagrees with the package's score(); not writing reward.json")


def export_real(args):
    import torch
    IR, _, _, _, bp = import_imagereward()
    bp.init_tokenizer = lambda: blip_tokenizer(args.bert)
    model = IR.ImageReward(med_config=args.med_config, device="cpu")
    state = torch.load(args.checkpoint, map_location="cpu")
    msg = model.load_state_dict(state, strict=False)
    print("load_state_dict:", msg)
    model.eval()
    os.makedirs(args.out, exist_ok=True)
    export_onnx(model, os.path.join(args.out, "model.onnx"), args.opset)
    write_tokenizer(model.blip.tokenizer, os.path.join(args.out, "tokenizer.json"))
    from PIL import Image
    import numpy as np
    rng = np.random.default_rng(0)
    imgs = [Image.fromarray(rng.integers(0, 256, (256, 320, 3), dtype=np.uint8)) for _ in range(2)]
    check_against_torch(model, os.path.join(args.out, "model.onnx"), model.blip.tokenizer, imgs,
                        "a photo of a cat", args.tol)
    files = [f for f in os.listdir(args.out) if f != "reward.json"]
    write_manifest(args.out, args.name, files, model.blip.tokenizer)
    print("wrote", args.out)


def tiny_images(img_dir):
    """Small deterministic RGB test images of several sizes and formats (files committed)."""
    import numpy as np
    from PIL import Image
    os.makedirs(img_dir, exist_ok=True)
    specs = [("wide.png", 96, 64), ("tall.png", 50, 90), ("square.webp", 224, 224), ("small.png", 17, 23)]
    names = []
    for i, (name, w, h) in enumerate(specs):
        y, x = np.mgrid[0:h, 0:w].astype(np.float64)
        r = 127.5 + 127.5 * np.sin(x / (3 + i) + y / 7.0)
        g = 255.0 * x / max(w - 1, 1)
        b = 255.0 * ((x // (4 + i) + y // 5) % 2)
        arr = np.stack([r, g, b], -1).round().clip(0, 255).astype(np.uint8)
        im = Image.fromarray(arr, "RGB")
        p = os.path.join(img_dir, name)
        if name.endswith(".webp"):
            im.save(p, quality=80, method=4)
        else:
            im.save(p, optimize=True)
        names.append(name)
    # Not PNG/JPEG/WebP: the CLI must name the file and the problem.
    with open(os.path.join(img_dir, "broken.png"), "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\nnot really a png")
    return names


def export_tiny(args):
    import numpy as np
    import torch
    from PIL import Image
    IR, VisionTransformer, BertConfig, BertModel, _ = import_imagereward()
    torch.manual_seed(0)
    out = os.path.join(args.assets, "reward-tiny")
    golden = os.path.join(args.assets, "golden", "score")
    img_dir = os.path.join(args.assets, "score-images")
    for d in (out, golden):
        os.makedirs(d, exist_ok=True)
        for f in os.listdir(d):
            os.remove(os.path.join(d, f))
    with tempfile.TemporaryDirectory() as td:
        vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(set(TINY_WORDS))
        vocab += list("abcdefghijklmnopqrstuvwxyz0123456789.,!?'-") + ["##" + c for c in "abcdefghijklmnopqrstuvwxyz"]
        vf = os.path.join(td, "vocab.txt")
        with open(vf, "w") as f:
            f.write("\n".join(vocab) + "\n")
        tok = blip_tokenizer(vf)
    width = 32
    visual = VisionTransformer(img_size=IMAGE_SIZE, patch_size=16, embed_dim=width, depth=2, num_heads=2,
                               mlp_ratio=2.0, drop_path_rate=0.0)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=width, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64, type_vocab_size=2, pad_token_id=0,
                     hidden_act="gelu", layer_norm_eps=1e-12, add_cross_attention=True)
    cfg.encoder_width = width
    text = BertModel(config=cfg, add_pooling_layer=False)
    model = IR.ImageReward.__new__(IR.ImageReward)
    torch.nn.Module.__init__(model)
    model.device = "cpu"
    blip = torch.nn.Module()
    blip.visual_encoder = visual
    blip.text_encoder = text
    blip.tokenizer = tok
    model.blip = blip
    model.preprocess = IR._transform(IMAGE_SIZE)
    model.mlp = IR.MLP(width)
    model.mean, model.std = SCORE_MEAN, SCORE_STD
    # Random weights at a scale where every layer matters: ImageReward's own MLP init (std 1/769)
    # would make every score the same constant, and the test could not tell a wrong input from a right one.
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / (p.shape[-1] ** 0.5))
            elif "norm" in name.lower() or "LayerNorm" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g)) if name.endswith("weight") else \
                    p.copy_(0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
        # Pre-scale the MLP so scores land around N(0, 1) after the fixed normalisation.
        model.mlp.layers[-1].weight.mul_(4.0)
    model.eval()

    names = tiny_images(img_dir)
    onnx_path = os.path.join(out, "model.onnx")
    export_onnx(model, onnx_path, args.opset)
    write_tokenizer(tok, os.path.join(out, "tokenizer.json"))
    write_manifest(out, "imagereward-tiny", ["model.onnx", "tokenizer.json"], tok,
                   {"note": "random-initialised, ImageReward's architecture at tiny width; for tests only"})

    images = [Image.open(os.path.join(img_dir, n)) for n in names]
    tensors, record = {}, {"images": names, "prompts": [], "score_mean": SCORE_MEAN, "score_std": SCORE_STD}
    for i, prompt in enumerate(TINY_PROMPTS):
        with torch.no_grad():
            scores = model.score(prompt, images)  # the package's list path (inference_rank)
            single = model.score(prompt, images[0])  # and its single-image path
        t = tok(prompt, padding="max_length", truncation=True, max_length=MAX_LENGTH)
        record["prompts"].append({"prompt": prompt, "scores": [float(s) for s in scores],
                                  "single_score_0": float(single),
                                  "input_ids": [int(x) for x in t["input_ids"]],
                                  "attention_mask": [int(x) for x in t["attention_mask"]]})
    # What Resize(bicubic)+CenterCrop produce (uint8) and the whole preprocessed tensor of two images.
    from torchvision.transforms import CenterCrop, Resize
    crop = [CenterCrop(IMAGE_SIZE)(Resize(IMAGE_SIZE, interpolation=IR.BICUBIC)(im)) for im in images]
    for n, c in zip(names, crop):
        tensors["crop." + n] = torch.from_numpy(np.asarray(c.convert("RGB")).copy())
    for n, im in list(zip(names, images))[:1]:
        tensors["pixel_values." + n] = model.preprocess(im).contiguous()
    _common.save_tensors(os.path.join(golden, "imagereward_tiny.safetensors"), tensors)
    _common.write_json(os.path.join(golden, "imagereward_tiny.json"), record)
    check_against_torch(model, onnx_path, tok, images, TINY_PROMPTS[0], 1e-5)
    print("wrote", out, golden, img_dir)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", nargs="?", help="output bundle directory (real export)")
    ap.add_argument("--checkpoint", help="ImageReward.pt (state dict)")
    ap.add_argument("--med-config", help="BLIP med_config.json shipped with the checkpoint")
    ap.add_argument("--bert", help="bert-base-uncased folder (or its vocab.txt)")
    ap.add_argument("--name", default="imagereward-v1.0")
    ap.add_argument("--opset", type=int, default=17)
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--tiny", action="store_true", help="tiny random model + goldens into --assets")
    ap.add_argument("--assets", default=os.path.join(_common.REPO_ROOT, "tests", "assets"))
    args = ap.parse_args()
    if args.tiny:
        export_tiny(args)
    else:
        if not (args.out and args.checkpoint and args.med_config and args.bert):
            ap.error("a real export needs OUT, --checkpoint, --med-config and --bert (or use --tiny)")
        export_real(args)


if __name__ == "__main__":
    main()
