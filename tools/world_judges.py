"""The shapes world's judges: a CLIP-style model, a classifier and an ImageReward-style reward model,
trained on the world's renders and exported in the bundle formats `dpoimg eval` / `dpoimg score` read.

    P=/work/pyenv/bin/python; W=/work/scratch/world
    nice -n 10 $P tools/world_judges.py clip --data $W/train.npz --out models/world-clip
    nice -n 10 $P tools/world_judges.py classifier --data $W/train.npz --out models/world-classifier
    nice -n 10 $P tools/world_judges.py standin-db --out $W/standin-db      # until the real DB exists
    nice -n 10 $P tools/world_judges.py reward --db $W/standin-db --clip models/world-clip --out models/world-reward
    $P tools/world_judges.py goldens            # tests/assets/world-judges/ (PNGs + golden.json)

Models (all small, 1 CPU thread, seeded):
  clip        CNN image tower on 32x32 + 2-layer transformer text tower over the world tokenizer
              (max_length 32, pad = eos = 608), symmetric InfoNCE with a learned temperature; each batch also
              carries one-attribute-changed "hard negative" prompts; augmentation against the softer model
              samples: random Gaussian blur, pixel noise, colour jitter. Bundle: metric kind "clip".
  classifier  the same CNN design, 18 classes = colour x shape (6 x 3) of the single object, or of a
              two-object scene's left/upper object (the first-named one is ambiguous: label_of);
              metric kind "inception" (images in [0,1], any size -> bilinear to 32 -> pool, logits).
  reward      towers initialised from the CLIP-style model (as ImageReward starts from BLIP); score =
              learned scale * cos(img, txt) + MLP([img, txt, img*txt]) (unit-normalised embeddings); ImageReward's pairwise loss
              -log sigmoid(r_i - r_j) for every pair rank_i < rank_j of a prompt (ties skipped) on the DB's train split; reward bundle "imagereward"
              with score mean/std over the train split's images.
Held-out numbers go to tools/logs/world_judges.json (merged per judge); every run appends to
tools/logs/world_judges.log.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402
from export_metrics import CLIP_MEAN, CLIP_STD, _export, _manifest  # noqa: E402

REPO = _common.REPO_ROOT
LOG = os.path.join(REPO, "tools", "logs", "world_judges.log")
RESULTS = os.path.join(REPO, "tools", "logs", "world_judges.json")
DEFAULT_TOKENIZER = "/work/scratch/world/run/tokenizer/tokenizer.json"
MAX_LENGTH, PAD_ID, SIZE, EMBED = 32, 608, 32, 64
COLOURS = ["red", "green", "blue", "yellow", "purple", "cyan"]
SHAPES = ["circle", "square", "triangle"]
BGS = COLOURS + ["white", "black", "gray"]
POSITIONS = ["top left", "top", "top right", "left", "right", "bottom left", "bottom", "bottom right"]
RELATIONS = ["left of", "right of", "above", "below"]


def dpoimg_bin():
    for p in (os.path.join(REPO, "target", "release", "dpoimg"), os.path.join(REPO, "target", "debug", "dpoimg")):
        if os.path.exists(p):
            return p
    sys.exit("no target/{release,debug}/dpoimg: run `cargo build --bin dpoimg` first")


def run_dpoimg(*args, capture=False):
    env = dict(os.environ)
    env.setdefault("LD_LIBRARY_PATH", os.path.join(REPO, ".ort", "lib"))
    r = subprocess.run([dpoimg_bin(), *args], env=env, check=True, text=True,
                       stdout=subprocess.PIPE if capture else None)
    return r.stdout


def log(msg):
    line = time.strftime("%Y-%m-%dT%H:%M:%SZ ", time.gmtime()) + msg
    print(line, flush=True)
    os.makedirs(os.path.dirname(LOG), exist_ok=True)
    with open(LOG, "a") as f:
        f.write(line + "\n")


def merge_results(judge, record):
    data = {}
    if os.path.exists(RESULTS):
        with open(RESULTS) as f:
            data = json.load(f)
    data[judge] = record
    _common.write_json(RESULTS, data)


def setup(seed, threads=1):
    import numpy as np
    import torch
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


# ---------------------------------------------------------------- the grammar (parse, variants)

def parse(prompt):
    """A world prompt -> attribute dict (the grammar of `dpoimg world prompts --help`)."""
    w = prompt.strip()
    if not w.startswith("a "):
        raise ValueError(f"not a world prompt: {prompt!r}")
    w = w[2:]
    d = {"bg": None}
    if " on a " in w and w.endswith(" background"):
        w, bg = w.rsplit(" on a ", 1)
        d["bg"] = bg[: -len(" background")]
    for rel in RELATIONS:
        if f" {rel} a " in w:
            a, b = w.split(f" {rel} a ")
            d.update(kind="two", rel=rel, c1=a.split()[0], s1=a.split()[1], c2=b.split()[0], s2=b.split()[1])
            return d
    d["kind"] = "one"
    d["pos"] = None
    if w.endswith(" in the center"):
        w, d["pos"] = w[: -len(" in the center")], "center"
    elif " at the " in w:
        w, d["pos"] = w.split(" at the ")
    t = w.split()
    d["size"] = t[0] if t[0] in ("small", "large") else None
    if d["size"]:
        t = t[1:]
    d["c1"], d["s1"] = t
    return d


def unparse(d):
    if d["kind"] == "two":
        s = f"a {d['c1']} {d['s1']} {d['rel']} a {d['c2']} {d['s2']}"
    else:
        s = "a " + (d["size"] + " " if d["size"] else "") + f"{d['c1']} {d['s1']}"
        if d["pos"] == "center":
            s += " in the center"
        elif d["pos"]:
            s += f" at the {d['pos']}"
    if d["bg"]:
        s += f" on a {d['bg']} background"
    return s


def variants(prompt):
    """Every valid prompt with exactly one attribute changed (objects keep distinct colours, the
    background differs from them; an unspecified size/position/background stays unspecified)."""
    d = parse(prompt)
    out = []
    objs = [d["c1"]] + ([d["c2"]] if d["kind"] == "two" else [])

    def add(**kw):
        e = dict(d, **kw)
        cols = [e["c1"]] + ([e["c2"]] if e["kind"] == "two" else [])
        if len(set(cols)) != len(cols) or (e["bg"] is not None and e["bg"] in cols):
            return
        out.append(unparse(e))

    for c in COLOURS:
        if c != d["c1"]:
            add(c1=c)
    for s in SHAPES:
        if s != d["s1"]:
            add(s1=s)
    if d["kind"] == "two":
        for c in COLOURS:
            if c != d["c2"]:
                add(c2=c)
        for s in SHAPES:
            if s != d["s2"]:
                add(s2=s)
        for r in RELATIONS:
            if r != d["rel"]:
                add(rel=r)
    else:
        if d["size"]:
            add(size="large" if d["size"] == "small" else "small")
        if d["pos"]:
            for p in ["center"] + POSITIONS:
                if p != d["pos"]:
                    add(pos=p)
    if d["bg"]:
        for b in BGS:
            if b != d["bg"] and b not in objs:
                add(bg=b)
    return out


def label_of(prompt):
    """Classifier label, 3 * colour + shape, of the single object, or of a two-object scene's left
    (left of / right of) or upper (above / below) object: "a red circle left of a blue square" and
    "a blue square right of a red circle" draw the same scene, so "the first-named object" would be a
    coin flip on two-object images."""
    d = parse(prompt)
    c, s = (d["c2"], d["s2"]) if d["kind"] == "two" and d["rel"] in ("right of", "below") else (d["c1"], d["s1"])
    return COLOURS.index(c) * len(SHAPES) + SHAPES.index(s)


# ---------------------------------------------------------------- tokenizer, images, augmentation

class Tok:
    """The world tokenizer as dpoimg's FixedTokenizer uses it (pad to 32 with 608, truncate)."""

    def __init__(self, path):
        from tokenizers import Tokenizer
        self.path = path
        self.t = Tokenizer.from_file(path)
        self.t.enable_padding(length=MAX_LENGTH, pad_id=PAD_ID, pad_token=self.t.id_to_token(PAD_ID))
        self.t.enable_truncation(MAX_LENGTH)
        self.cache = {}

    def __call__(self, prompts):
        import torch
        miss = [p for p in dict.fromkeys(prompts) if p not in self.cache]
        if miss:
            for p, e in zip(miss, self.t.encode_batch(miss)):
                self.cache[p] = (e.ids, e.attention_mask)
        ids = torch.tensor([self.cache[p][0] for p in prompts], dtype=torch.long)
        mask = torch.tensor([self.cache[p][1] for p in prompts], dtype=torch.long)
        return ids, mask

    def trimmed(self, prompts):
        """For training only: the padded tail cut to the batch's longest prompt. Exact (pads are masked
        out of attention and pooling) and half the text tower's work."""
        ids, mask = self(prompts)
        n = int(mask.sum(1).max())
        return ids[:, :n], mask[:, :n]


def normalise(x):
    """[B,3,H,W] in [0,1] -> CLIP-normalised (what the manifest's preprocess does)."""
    import torch
    m = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    s = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x - m) / s


def to_unit(u8):
    import torch
    return torch.from_numpy(u8).permute(0, 3, 1, 2).float() / 255.0


def blur(x, sigma):
    """Per-image Gaussian blur ([B] sigmas; 0 = none), 5x5 kernel, reflect padding."""
    import torch
    import torch.nn.functional as F
    r = torch.arange(-2, 3, dtype=torch.float32)
    k = torch.exp(-(r[None] ** 2) / (2 * sigma.clamp(min=1e-3)[:, None] ** 2))
    k = k / k.sum(1, keepdim=True)
    k = torch.where(sigma[:, None] < 1e-3, (r[None] == 0).float(), k)  # [B,5]
    b, c, h, w = x.shape
    xp = F.pad(x.reshape(1, b * c, h, w), (2, 2, 2, 2), mode="reflect")
    kh = k.repeat_interleave(c, 0)
    y = F.conv2d(xp, kh.view(b * c, 1, 1, 5), groups=b * c)
    y = F.conv2d(y, kh.view(b * c, 1, 5, 1), groups=b * c)
    return y.view(b, c, h, w)


def augment(x, gen):
    """The domain shift to model samples: blur (sigma U[0,1.2] on 70 %), noise (std U[0,0.06]),
    per-channel gain/offset jitter (+-8 %, +-0.04). x in [0,1]."""
    import torch
    b = x.shape[0]
    sig = torch.rand(b, generator=gen) * 1.2 * (torch.rand(b, generator=gen) < 0.7).float()
    x = blur(x, sig)
    x = x * (1 + 0.08 * (2 * torch.rand(b, 3, 1, 1, generator=gen) - 1)) + 0.04 * (2 * torch.rand(b, 3, 1, 1, generator=gen) - 1)
    x = x + torch.randn(x.shape, generator=gen) * (0.06 * torch.rand(b, 1, 1, 1, generator=gen))
    return x.clamp(0, 1)


def load_png_u8(path):
    import numpy as np
    from PIL import Image
    return np.array(Image.open(path).convert("RGB"))


def preprocess_pil(u8):
    """What dpoimg's preprocess does for a [H,W,3] uint8 image: Pillow bicubic (shorter side to 32),
    centre crop 32, CLIP normalisation. Identity resize for 32x32 renders."""
    import numpy as np
    import torch
    from PIL import Image
    from torchvision.transforms import CenterCrop, InterpolationMode, Resize
    im = Image.fromarray(u8)
    im = CenterCrop(SIZE)(Resize(SIZE, interpolation=InterpolationMode.BICUBIC)(im))
    x = torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float()[None] / 255.0
    return normalise(x)


# ---------------------------------------------------------------- models

def make_cnn(width, hidden):
    import torch.nn as nn
    w = width

    def blk(i, o, s):
        return [nn.Conv2d(i, o, 3, stride=s, padding=1), nn.BatchNorm2d(o), nn.ReLU()]

    return nn.Sequential(*blk(3, w, 1), *blk(w, 2 * w, 2), *blk(2 * w, 4 * w, 2), *blk(4 * w, 4 * w, 2),
                         nn.Flatten(), nn.Linear(4 * w * 16, hidden), nn.ReLU())


def text_tower_cls():
    import torch
    import torch.nn as nn

    class Block(nn.Module):
        def __init__(self, d, heads):
            super().__init__()
            self.h = heads
            self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
            self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

        def forward(self, x, bias):
            b, l, d = x.shape
            q, k, v = self.qkv(self.ln1(x)).view(b, l, 3, self.h, d // self.h).permute(2, 0, 3, 1, 4)
            a = torch.softmax(q @ k.transpose(-1, -2) / (d // self.h) ** 0.5 + bias, -1)
            x = x + self.proj((a @ v).transpose(1, 2).reshape(b, l, d))
            return x + self.mlp(self.ln2(x))

    class TextTower(nn.Module):
        """Token + position embeddings, 2 pre-LN transformer blocks, masked mean pool, projection."""

        def __init__(self, vocab, d=64, layers=2, heads=4, embed=EMBED):
            super().__init__()
            self.tok = nn.Embedding(vocab, d)
            self.pos = nn.Parameter(0.02 * torch.randn(MAX_LENGTH, d))
            self.blocks = nn.ModuleList([Block(d, heads) for _ in range(layers)])
            self.ln = nn.LayerNorm(d)
            self.out = nn.Linear(d, embed)

        def forward(self, input_ids, attention_mask):
            m = attention_mask.float()
            bias = (1.0 - m)[:, None, None, :] * -1e4
            x = self.tok(input_ids) + self.pos[: input_ids.shape[1]]
            for b in self.blocks:
                x = b(x, bias)
            x = self.ln(x)
            x = (x * m[..., None]).sum(1) / m.sum(1, keepdim=True).clamp(min=1.0)
            return self.out(x)

    return TextTower


def make_clip(vocab):
    import math
    import torch
    import torch.nn as nn

    class WorldClip(nn.Module):
        def __init__(self):
            super().__init__()
            self.image = nn.Sequential(make_cnn(16, 128), nn.Linear(128, EMBED))
            self.text = text_tower_cls()(vocab)
            self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

        def image_embeds(self, pixel_values):
            return self.image(pixel_values)

        def text_embeds(self, input_ids, attention_mask):
            return self.text(input_ids, attention_mask)

    return WorldClip()


def clip_export_modules(model):
    import torch

    class Image(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = model

        def forward(self, pixel_values):
            return self.m.image_embeds(pixel_values)

    class Text(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = model

        def forward(self, input_ids, attention_mask):
            return self.m.text_embeds(input_ids, attention_mask)

    return Image().eval(), Text().eval()


def load_data(path):
    import numpy as np
    d = np.load(path)
    return d["images"], [str(p) for p in d["prompts"]]


def split_indices(prompts, rng, frac=0.05):
    """Hold out whole prompts (5 %) for validation inside the training data."""
    import numpy as np
    uniq = sorted(set(prompts))
    rng.shuffle(uniq)
    held = set(uniq[: max(1, int(len(uniq) * frac))])
    val = np.array([i for i, p in enumerate(prompts) if p in held])
    tr = np.array([i for i, p in enumerate(prompts) if p not in held])
    return tr, val


def test_set(count, seed, out_dir):
    """Test-split prompts of the grammar rendered by dpoimg (index.json order)."""
    os.makedirs(out_dir, exist_ok=True)
    ptxt = os.path.join(out_dir, "prompts.txt")
    with open(ptxt, "w") as f:
        f.write(run_dpoimg("world", "prompts", "--split", "test", "--count", str(count), "--seed", str(seed),
                           capture=True))
    run_dpoimg("world", "render", "--prompts", ptxt, "-o", os.path.join(out_dir, "r"), "--seed", str(seed + 1))
    with open(os.path.join(out_dir, "r", "index.json")) as f:
        idx = json.load(f)["images"]
    import numpy as np
    imgs = np.stack([load_png_u8(os.path.join(out_dir, "r", e["file"])) for e in idx])
    return imgs, [e["prompt"] for e in idx]


# ---------------------------------------------------------------- clip

def clip_variant_accuracy(model, tok, imgs_u8, prompts, rng, blur_sigma=0.0, n_var=8):
    """Top-1 accuracy of the true prompt among it and up to n_var one-attribute variants."""
    import torch
    correct = 0
    with torch.no_grad():
        x = to_unit(imgs_u8)
        if blur_sigma:
            x = blur(x, torch.full((x.shape[0],), blur_sigma))
        ie = torch.nn.functional.normalize(model.image_embeds(normalise(x)), dim=-1)
        for i, p in enumerate(prompts):
            v = variants(p)
            v = [v[j] for j in rng.permutation(len(v))[:n_var]]
            ids, mask = tok([p] + v)
            te = torch.nn.functional.normalize(model.text_embeds(ids, mask), dim=-1)
            correct += int(torch.argmax(te @ ie[i]).item() == 0)
    return correct / len(prompts)


def cmd_clip(args):
    import numpy as np
    import torch
    import torch.nn.functional as F
    t0 = time.time()
    rng = setup(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    tok = Tok(args.tokenizer)
    images, prompts = load_data(args.data)
    tr, val = split_indices(prompts, rng)
    model = make_clip(tok.t.get_vocab_size())
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    steps = args.steps
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps, pct_start=0.1)
    var_cache = {}
    log(f"clip: start seed={args.seed} steps={steps} batch={args.batch} train={len(tr)} val={len(val)}")
    model.train()
    for step in range(steps):
        bi = rng.choice(tr, args.batch, replace=False)
        bp = [prompts[i] for i in bi]
        x = normalise(augment(to_unit(images[bi]), gen))
        hard = []
        for p in bp:
            if p not in var_cache:
                var_cache[p] = variants(p)
            v = var_cache[p]
            hard.append(v[rng.integers(len(v))])
        ids, mask = tok.trimmed(bp + hard)
        ie = F.normalize(model.image_embeds(x), dim=-1)
        te = F.normalize(model.text_embeds(ids, mask), dim=-1)
        logits = model.logit_scale.exp().clamp(max=100) * ie @ te.T  # [B, 2B]
        pid = {p: k for k, p in enumerate(dict.fromkeys(bp + hard))}
        a = torch.tensor([pid[p] for p in bp])
        c = torch.tensor([pid[p] for p in bp + hard])
        pos = (a[:, None] == c[None, :]).float()
        # image->text over true + hard-negative prompts; text->image over the batch's images; several
        # renders of one prompt in a batch are all positives (multi-positive InfoNCE)
        l_i = -(torch.logsumexp(logits.masked_fill(pos == 0, -1e9), 1) - torch.logsumexp(logits, 1)).mean()
        lt = logits[:, : len(bp)].T
        pt = pos[:, : len(bp)].T
        l_t = -(torch.logsumexp(lt.masked_fill(pt == 0, -1e9), 1) - torch.logsumexp(lt, 1)).mean()
        loss = (l_i + l_t) / 2
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"clip: step {step} loss {loss.item():.4f} temp {1 / model.logit_scale.exp().item():.4f} "
                f"({time.time() - t0:.0f}s)")
    model.eval()
    val_sub = val[rng.permutation(len(val))[:500]]
    val_acc = clip_variant_accuracy(model, tok, images[val_sub], [prompts[i] for i in val_sub], rng)
    timgs, tprompts = test_set(args.test_count, 1000 + args.seed, os.path.join(args.work, "clip-test"))
    acc = clip_variant_accuracy(model, tok, timgs, tprompts, np.random.default_rng(0))
    acc_b = clip_variant_accuracy(model, tok, timgs, tprompts, np.random.default_rng(0), blur_sigma=1.0)
    train_s = time.time() - t0
    os.makedirs(args.out, exist_ok=True)
    for f in os.listdir(args.out):
        os.remove(os.path.join(args.out, f))
    img_m, txt_m = clip_export_modules(model)
    _export(img_m, (torch.zeros(2, 3, SIZE, SIZE),), os.path.join(args.out, "image.onnx"), ["pixel_values"],
            ["image_embeds"], {"pixel_values": {0: "batch"}, "image_embeds": {0: "batch"}})
    ids0 = torch.zeros(2, MAX_LENGTH, dtype=torch.long)
    _export(txt_m, (ids0, torch.ones_like(ids0)), os.path.join(args.out, "text.onnx"),
            ["input_ids", "attention_mask"], ["text_embeds"],
            {"input_ids": {0: "batch"}, "attention_mask": {0: "batch"}, "text_embeds": {0: "batch"}})
    tok.t.no_padding()
    tok.t.no_truncation()
    tok.t.save(os.path.join(args.out, "tokenizer.json"))
    torch.save(model.state_dict(), os.path.join(args.work, "world-clip.pt"))
    body = dict(kind="clip", name="world-clip", image_onnx="image.onnx", text_onnx="text.onnx",
                tokenizer="tokenizer.json", text={"max_length": MAX_LENGTH, "pad_id": PAD_ID},
                preprocess={"resize": "bicubic", "size": SIZE, "crop": "center", "mean": list(CLIP_MEAN),
                            "std": list(CLIP_STD)},
                embed_dim=EMBED,
                note="CLIP-style model of the shapes world (tools/world_judges.py clip); 32x32 CNN + 2-layer text transformer")
    _manifest(args.out, body)
    diff = onnx_check_clip(model, args.out, tok, timgs[:16], tprompts[:16])
    rec = dict(seed=args.seed, steps=steps, batch=args.batch, train_seconds=round(train_s, 1),
               test_prompts=len(tprompts), variants_per_prompt=8,
               test_top1_vs_variants=acc, test_top1_vs_variants_blur1=acc_b, val_top1_vs_variants=val_acc,
               chance_about=1 / 9, onnx_vs_torch_max_abs=diff,
               bundle_bytes=sum(os.path.getsize(os.path.join(args.out, f)) for f in os.listdir(args.out)))
    merge_results("clip", rec)
    log(f"clip: done {json.dumps(rec)}")


def onnx_check_clip(model, out, tok, imgs_u8, prompts):
    import numpy as np
    import onnxruntime as ort
    import torch
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    si = ort.InferenceSession(os.path.join(out, "image.onnx"), so, providers=["CPUExecutionProvider"])
    st = ort.InferenceSession(os.path.join(out, "text.onnx"), so, providers=["CPUExecutionProvider"])
    x = torch.cat([preprocess_pil(u) for u in imgs_u8])
    tok2 = Tok(tok.path)
    ids, mask = tok2(prompts)
    with torch.no_grad():
        wi, wt = model.image_embeds(x).numpy(), model.text_embeds(ids, mask).numpy()
    gi = si.run(None, {"pixel_values": x.numpy()})[0]
    gt = st.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
    diff = float(max(np.abs(gi - wi).max(), np.abs(gt - wt).max()))
    log(f"clip: onnx vs torch max|diff| {diff:.3g}")
    if diff > 1e-4:
        sys.exit("clip: ONNX disagrees with torch")
    return diff


# ---------------------------------------------------------------- classifier

def make_classifier():
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    class WorldClassifier(nn.Module):
        """images [B,3,H,W] in [0,1], any size -> bilinear to 32 -> CLIP normalisation -> CNN."""

        def __init__(self):
            super().__init__()
            self.features = make_cnn(16, 128)
            self.fc = nn.Linear(128, len(COLOURS) * len(SHAPES))

        def forward(self, images):
            x = F.interpolate(images, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
            m = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
            s = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
            pool = self.features((x - m) / s)
            return pool, self.fc(pool)

    return WorldClassifier()


def classifier_accuracy(model, imgs_u8, labels, blur_sigma=0.0):
    import torch
    with torch.no_grad():
        x = to_unit(imgs_u8)
        if blur_sigma:
            x = blur(x, torch.full((x.shape[0],), blur_sigma))
        pred = torch.cat([model(x[i:i + 256])[1].argmax(1) for i in range(0, len(x), 256)])
    return float((pred == torch.tensor(labels)).float().mean())


def classifier_one_object(model, imgs_u8, prompts):
    """Accuracy on one-object prompts alone: for two objects the label is ambiguous by construction
    ("a red circle left of a blue square" and "a blue square right of a red circle" draw the same image)."""
    import numpy as np
    k = np.array([i for i, p in enumerate(prompts) if parse(p)["kind"] == "one"])
    tl = [label_of(prompts[i]) for i in k]
    return dict(test_one_object_images=len(k), test_accuracy_one_object=classifier_accuracy(model, imgs_u8[k], tl),
                test_accuracy_one_object_blur1=classifier_accuracy(model, imgs_u8[k], tl, blur_sigma=1.0))


def cmd_classifier(args):
    import numpy as np
    import torch
    import torch.nn.functional as F
    t0 = time.time()
    rng = setup(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    images, prompts = load_data(args.data)
    labels = np.array([label_of(p) for p in prompts])
    tr, val = split_indices(prompts, rng)
    model = make_classifier()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.1)
    log(f"classifier: start seed={args.seed} steps={args.steps} batch={args.batch}")
    model.train()
    for step in range(args.steps):
        bi = rng.choice(tr, args.batch, replace=False)
        x = augment(to_unit(images[bi]), gen)
        loss = F.cross_entropy(model(x)[1], torch.from_numpy(labels[bi]))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == args.steps - 1:
            log(f"classifier: step {step} loss {loss.item():.4f} ({time.time() - t0:.0f}s)")
    model.eval()
    val_acc = classifier_accuracy(model, images[val], labels[val])
    timgs, tprompts = test_set(args.test_count, 2000 + args.seed, os.path.join(args.work, "classifier-test"))
    tl = [label_of(p) for p in tprompts]
    acc = classifier_accuracy(model, timgs, tl)
    acc_b = classifier_accuracy(model, timgs, tl, blur_sigma=1.0)
    one = classifier_one_object(model, timgs, tprompts)
    train_s = time.time() - t0
    os.makedirs(args.out, exist_ok=True)
    for f in os.listdir(args.out):
        os.remove(os.path.join(args.out, f))
    _export(model.eval(), (torch.zeros(2, 3, SIZE, SIZE),), os.path.join(args.out, "model.onnx"), ["images"],
            ["pool", "logits"],
            {"images": {0: "batch", 2: "height", 3: "width"}, "pool": {0: "batch"}, "logits": {0: "batch"}})
    _manifest(args.out, dict(kind="inception", name="world-classifier", onnx="model.onnx", pool_dim=128,
                             classes=len(COLOURS) * len(SHAPES),
                             note="shapes-world classifier (tools/world_judges.py classifier): 18 classes = "
                                  "colour x shape of the single object (of two: the left or upper one), "
                                  "class = 3*colour + shape with "
                                  "colours red green blue yellow purple cyan, shapes circle square triangle"))
    torch.save(model.state_dict(), os.path.join(args.work, "world-classifier.pt"))
    # ONNX vs torch, at 32 and at another size (the graph's resize)
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    s = ort.InferenceSession(os.path.join(args.out, "model.onnx"), so, providers=["CPUExecutionProvider"])
    diff = 0.0
    for x in (to_unit(timgs[:16]), torch.rand(3, 3, 48, 40, generator=gen)):
        with torch.no_grad():
            wp, wl = model(x)
        gp, gl = s.run(None, {"images": x.numpy()})
        diff = max(diff, float(np.abs(gp - wp.numpy()).max()), float(np.abs(gl - wl.numpy()).max()))
    log(f"classifier: onnx vs torch max|diff| {diff:.3g}")
    if diff > 1e-4:
        sys.exit("classifier: ONNX disagrees with torch")
    rec = dict(seed=args.seed, steps=args.steps, batch=args.batch, train_seconds=round(train_s, 1),
               classes="colour x shape of the single object, or the left/upper one of two (18)", test_images=len(tl),
               test_accuracy=acc, test_accuracy_blur1=acc_b, val_accuracy=val_acc, onnx_vs_torch_max_abs=diff,
               **one,
               bundle_bytes=os.path.getsize(os.path.join(args.out, "model.onnx")))
    merge_results("classifier", rec)
    log(f"classifier: done {json.dumps(rec)}")


# ---------------------------------------------------------------- stand-in DB

def cmd_standin_db(args):
    """Per prompt: one correct render + renders of `--variants` one-attribute variants, all named under
    the true prompt, annotated by `dpoimg world annotate` (the checker scores, simulated raters rank)."""
    rng = setup(args.seed)
    work = os.path.join(args.work, "standin-render")
    os.makedirs(work, exist_ok=True)
    ps = [p for p in run_dpoimg("world", "prompts", "--count", str(args.count), "--seed", str(args.seed),
                                capture=True).splitlines() if p.strip()]
    plan = []
    for p in ps:
        v = variants(p)
        plan.append((p, [p] + [v[j] for j in rng.permutation(len(v))[: args.variants]]))
    allp = list(dict.fromkeys(q for _, qs in plan for q in qs))
    ptxt = os.path.join(work, "prompts.txt")
    with open(ptxt, "w") as f:
        f.write("\n".join(allp) + "\n")
    rdir = os.path.join(work, "r")
    run_dpoimg("world", "render", "--prompts", ptxt, "-o", rdir, "--seed", str(args.seed))
    with open(os.path.join(rdir, "index.json")) as f:
        file_of = {e["prompt"]: e["file"] for e in json.load(f)["images"]}
    entries = [{"file": os.path.join("r", file_of[q]), "prompt": p} for p, qs in plan for q in qs]
    ix = os.path.join(work, "index.json")
    _common.write_json(ix, {"version": 1, "images": entries})
    run_dpoimg("world", "annotate", "--index", ix, "-o", args.out, "--seed", str(args.seed))
    log(f"standin-db: {len(ps)} prompts x {1 + args.variants} images -> {args.out}")


def read_db(db, split):
    import pyarrow.parquet as pq
    t = pq.read_table(os.path.join(db, f"metadata-{split}.parquet")).to_pydict()
    groups = {}
    for i in range(len(t["image_path"])):
        groups.setdefault(t["prompt_id"][i], []).append(
            dict(path=os.path.join(db, t["image_path"][i]), prompt=t["prompt"][i], rank=int(t["rank"][i]),
                 checker=float(t["checker_score"][i])))
    return list(groups.values())


# ---------------------------------------------------------------- reward

def make_reward(clip):
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    class WorldReward(nn.Module):
        """ImageReward's shape at world scale: towers from the CLIP-style model, an MLP head."""

        def __init__(self):
            super().__init__()
            self.image, self.text = clip.image, clip.text
            self.scale = nn.Parameter(clip.logit_scale.detach().exp().clone())
            self.mlp = nn.Sequential(nn.Linear(3 * EMBED, 128), nn.GELU(), nn.Linear(128, 64), nn.GELU(),
                                     nn.Linear(64, 1))
            with torch.no_grad():
                self.mlp[-1].weight.mul_(0.1)
                self.mlp[-1].bias.zero_()

        def forward(self, pixel_values, input_ids, attention_mask):
            ie = F.normalize(self.image(pixel_values), dim=-1)
            te = F.normalize(self.text(input_ids, attention_mask), dim=-1)
            cos = (ie * te).sum(-1)
            return self.scale * cos + self.mlp(torch.cat([ie, te, ie * te], -1)).squeeze(-1)

    return WorldReward()


def load_group_images(groups):
    for g in groups:
        for e in g:
            e["u8"] = load_png_u8(e["path"])
    return groups


def pair_accuracy(scores_by_group, groups, key):
    """Fraction of pairs (rank_i < rank_j, or checker_i > checker_j) the model orders the same way;
    equal model scores count half."""
    ok = n = 0.0
    for s, g in zip(scores_by_group, groups):
        for i in range(len(g)):
            for j in range(len(g)):
                better = (g[i]["rank"] < g[j]["rank"]) if key == "rank" else (g[i]["checker"] > g[j]["checker"])
                if better:
                    n += 1
                    ok += 1.0 if s[i] > s[j] else (0.5 if s[i] == s[j] else 0.0)
    return ok / max(n, 1)


def reward_scores(model, tok, groups):
    import torch
    out = []
    with torch.no_grad():
        for g in groups:
            x = torch.cat([preprocess_pil(e["u8"]) for e in g])
            ids, mask = tok([e["prompt"] for e in g])
            out.append(model(x, ids, mask).numpy())
    return out


def initial_reward(args, tok):
    """Seeds everything (setup), then builds the reward model's starting point: towers from the
    CLIP-style weights in --work, a freshly initialised head. Returns it with setup's generator."""
    import torch
    rng = setup(args.seed)
    clip = make_clip(tok.t.get_vocab_size())
    clip.load_state_dict(torch.load(os.path.join(args.work, "world-clip.pt")))
    return make_reward(clip), rng


def train_reward(args, tok, train, log_prefix="reward"):
    """A reward model (towers from the CLIP-style weights in --work) trained on `train`'s groups with
    ImageReward's pairwise loss, -log sigmoid(r_preferred - r_rejected) over every ranked pair."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    t0 = time.time()
    model, rng = initial_reward(args, tok)
    gen = torch.Generator().manual_seed(args.seed)
    # pairs per group: (i, j) with rank_i < rank_j (ties skipped)
    pairs = [[(i, j) for i in range(len(g)) for j in range(len(g)) if g[i]["rank"] < g[j]["rank"]] for g in train]
    keep = [k for k, p in enumerate(pairs) if p]
    head = [p for n, p in model.named_parameters() if n.startswith("mlp") or n == "scale"]
    towers = [p for n, p in model.named_parameters() if not (n.startswith("mlp") or n == "scale")]
    # ImageReward fine-tunes BLIP with most of its layers frozen; --tower-lr-scale 0 freezes the towers
    # whole (the CLIP-style model's ranking stays, the head learns a correction to it)
    groups, max_lr = [{"params": head, "lr": args.lr}], [args.lr]
    if args.tower_lr_scale > 0:
        groups.insert(0, {"params": towers, "lr": args.lr * args.tower_lr_scale})
        max_lr.insert(0, args.lr * args.tower_lr_scale)
    else:
        for p in towers:
            p.requires_grad_(False)
    opt = torch.optim.AdamW(groups, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=max_lr, total_steps=args.steps, pct_start=0.1)
    model.train()
    for m in model.modules():  # BatchNorm statistics stay those of the CLIP pretraining
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
    for step in range(args.steps):
        gi = rng.choice(keep, min(args.groups, len(keep)), replace=False)
        u8 = np.stack([e["u8"] for k in gi for e in train[k]])
        x = normalise(augment(to_unit(u8), gen))
        ids, mask = tok.trimmed([e["prompt"] for k in gi for e in train[k]])
        r = model(x, ids, mask)
        off, li, lj = 0, [], []
        for k in gi:
            for i, j in pairs[k]:
                li.append(off + i)
                lj.append(off + j)
            off += len(train[k])
        loss = -F.logsigmoid(r[li] - r[lj]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0 or step == args.steps - 1:
            log(f"{log_prefix}: step {step} loss {loss.item():.4f} ({time.time() - t0:.0f}s)")
    model.eval()
    return model


def reward_cv(args, tok, train):
    """--cv K: K folds of the train split's prompts; each fold's held-out pairwise accuracy (vs the
    annotators' ranks) of a model trained on the other folds. Chooses settings without the
    validation split (20 prompts, too few to rank settings) or the test split."""
    import numpy as np
    order = np.random.default_rng(args.seed).permutation(len(train))
    folds = [order[k::args.cv] for k in range(args.cv)]
    accs = []
    for k, held in enumerate(folds):
        hs = set(int(i) for i in held)
        tr = [g for i, g in enumerate(train) if i not in hs]
        te = [train[int(i)] for i in held]
        model = train_reward(args, tok, tr, log_prefix=f"reward cv {k + 1}/{args.cv}")
        accs.append(pair_accuracy(reward_scores(model, tok, te), te, "rank"))
    rec = dict(cv=args.cv, steps=args.steps, lr=args.lr, tower_lr_scale=args.tower_lr_scale, seed=args.seed,
               fold_pair_acc_rank=accs, mean_pair_acc_rank=float(np.mean(accs)))
    log(f"reward cv: {json.dumps(rec)}")


def cmd_reward(args):
    import numpy as np
    import torch
    t0 = time.time()
    if args.cv < 0 or args.cv == 1:
        sys.exit(f"reward: --cv {args.cv}: K-fold cross-validation needs K >= 2 (e.g. --cv 5); 0 = off")
    tok = Tok(os.path.join(args.clip, "tokenizer.json"))
    train = load_group_images(read_db(args.db, "train"))
    if args.cv:
        return reward_cv(args, tok, train)
    test = load_group_images(read_db(args.db, "test"))
    val = load_group_images(read_db(args.db, "validation"))
    untrained, _ = initial_reward(args, tok)  # train_reward starts from the same weights
    before = reward_scores(untrained.eval(), tok, test)
    base = dict(test_pair_acc_rank=pair_accuracy(before, test, "rank"),
                test_pair_acc_checker=pair_accuracy(before, test, "checker"))
    log(f"reward: start seed={args.seed} train prompts={len(train)} val={len(val)} test={len(test)}; "
        f"before training (CLIP cosine alone) {base}")
    t_train = time.time()
    model = train_reward(args, tok, train)
    train_s = time.time() - t_train
    tr_scores = reward_scores(model, tok, train)
    flat = np.concatenate(tr_scores).astype(np.float64)
    mean, std = float(flat.mean()), float(flat.std())
    ts = reward_scores(model, tok, test)
    vs = reward_scores(model, tok, val)
    rec = dict(seed=args.seed, steps=args.steps, groups_per_step=args.groups, lr=args.lr,
               tower_lr_scale=args.tower_lr_scale, db=args.db,
               train_prompts=len(train), test_prompts=len(test),
               test_pair_acc_rank=pair_accuracy(ts, test, "rank"),
               test_pair_acc_checker=pair_accuracy(ts, test, "checker"),
               val_pair_acc_rank=pair_accuracy(vs, val, "rank"),
               before_training=base, score_mean=mean, score_std=std)
    # the annotators themselves vs the checker order (the ceiling a rank-trained model is measured against)
    rec["test_annotator_vs_checker"] = pair_accuracy([[-e["rank"] for e in g] for g in test], test, "checker")
    # training alone; total_seconds adds image loading and the before/after scoring (session 9's
    # logged train_seconds, 52.0, was that total)
    rec["train_seconds"] = round(train_s, 1)
    rec["total_seconds"] = round(time.time() - t0, 1)
    os.makedirs(args.out, exist_ok=True)
    for f in os.listdir(args.out):
        os.remove(os.path.join(args.out, f))
    _export(model, (torch.zeros(2, 3, SIZE, SIZE), torch.zeros(2, MAX_LENGTH, dtype=torch.long),
                    torch.ones(2, MAX_LENGTH, dtype=torch.long)),
            os.path.join(args.out, "model.onnx"), ["pixel_values", "input_ids", "attention_mask"], ["raw_score"],
            {"pixel_values": {0: "batch"}, "input_ids": {0: "batch"}, "attention_mask": {0: "batch"},
             "raw_score": {0: "batch"}})
    import shutil
    shutil.copy(os.path.join(args.clip, "tokenizer.json"), os.path.join(args.out, "tokenizer.json"))
    torch.save(model.state_dict(), os.path.join(args.work, "world-reward.pt"))
    files = ["model.onnx", "tokenizer.json"]
    manifest = {
        "format": "dpoimg-reward", "version": 1, "kind": "imagereward", "name": "world-reward",
        "onnx": "model.onnx", "tokenizer": "tokenizer.json",
        "text": {"max_length": MAX_LENGTH, "pad_id": PAD_ID},
        "preprocess": {"resize": "bicubic", "size": SIZE, "crop": "center", "mean": list(CLIP_MEAN),
                       "std": list(CLIP_STD)},
        "score": {"mean": mean, "std": std},
        "files": {f: _common.sha256_file(os.path.join(args.out, f)) for f in files},
        "note": f"ImageReward-style reward of the shapes world (tools/world_judges.py reward), trained on "
                f"{os.path.basename(os.path.normpath(args.db))}; score mean/std over its train split",
    }
    _common.write_json(os.path.join(args.out, "reward.json"), manifest)
    # ONNX vs torch
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    s = ort.InferenceSession(os.path.join(args.out, "model.onnx"), so, providers=["CPUExecutionProvider"])
    g = test[0] + test[1]
    x = torch.cat([preprocess_pil(e["u8"]) for e in g])
    ids, mask = tok([e["prompt"] for e in g])
    with torch.no_grad():
        want = model(x, ids, mask).numpy()
    got = s.run(None, {"pixel_values": x.numpy(), "input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
    rec["onnx_vs_torch_max_abs"] = float(np.abs(got - want).max())
    rec["bundle_bytes"] = sum(os.path.getsize(os.path.join(args.out, f)) for f in files)
    if rec["onnx_vs_torch_max_abs"] > 1e-4:
        sys.exit("reward: ONNX disagrees with torch")
    merge_results("reward", rec)
    log(f"reward: done {json.dumps(rec)}")


# ---------------------------------------------------------------- goldens

GOLDEN_PROMPTS = ["a large red circle at the top left on a gray background",
                  "a blue triangle above a yellow square",
                  "a small green square in the center on a black background",
                  "a purple circle right of a cyan triangle on a white background"]


def cmd_goldens(args):
    """4 committed PNGs (renders; the last two blurred like model samples) and torch's outputs of the three
    shipped judges on them (loaded from the bundles' own torch weights in --work)."""
    import numpy as np
    import torch
    from PIL import Image
    setup(0)
    out = args.assets
    os.makedirs(out, exist_ok=True)
    with tempfile.TemporaryDirectory() as td:
        run_dpoimg("world", "render", *sum((["--prompt", p] for p in GOLDEN_PROMPTS), []), "-o", td, "--seed", "5")
        with open(os.path.join(td, "index.json")) as f:
            idx = json.load(f)["images"]
        names = []
        for k, e in enumerate(idx):
            u8 = load_png_u8(os.path.join(td, e["file"]))
            if k >= 2:
                x = blur(to_unit(u8[None]), torch.tensor([0.8 + 0.3 * k]))
                u8 = (x[0].permute(1, 2, 0).numpy() * 255).round().clip(0, 255).astype(np.uint8)
            name = f"img{k}.png"
            Image.fromarray(u8).save(os.path.join(out, name))
            names.append(name)
    imgs = [load_png_u8(os.path.join(out, n)) for n in names]
    tok = Tok(os.path.join(args.models, "world-clip", "tokenizer.json"))
    clip = make_clip(tok.t.get_vocab_size())
    clip.load_state_dict(torch.load(os.path.join(args.work, "world-clip.pt")))
    clip.eval()
    reward = make_reward(make_clip(tok.t.get_vocab_size()))
    reward.load_state_dict(torch.load(os.path.join(args.work, "world-reward.pt")))
    reward.eval()
    cls = make_classifier()
    cls.load_state_dict(torch.load(os.path.join(args.work, "world-classifier.pt")))
    cls.eval()
    with open(os.path.join(args.models, "world-reward", "reward.json")) as f:
        sc = json.load(f)["score"]
    rec = {"images": names, "prompts": GOLDEN_PROMPTS, "reward": [], "clip": [], "classifier": []}
    x = torch.cat([preprocess_pil(u) for u in imgs])
    with torch.no_grad():
        ie = clip.image_embeds(x).double()
        for p in GOLDEN_PROMPTS:
            ids, mask = tok([p] * len(imgs))
            raw = reward(x, ids, mask).double()
            rec["reward"].append({"prompt": p, "normalised": [float(v) for v in (raw - sc["mean"]) / sc["std"]]})
            te = clip.text_embeds(ids[:1], mask[:1])[0].double()
            s = (100 * torch.nn.functional.cosine_similarity(ie, te[None], dim=-1)).clamp(min=0)
            rec["clip"].append({"prompt": p, "scores": [float(v) for v in s]})
        for u in imgs:
            pool, logits = cls(to_unit(u[None]))
            rec["classifier"].append({"pool": [float(v) for v in pool[0]], "logits": [float(v) for v in logits[0]]})
    rec["bundle_sha256"] = {
        b: _common.sha256_file(os.path.join(args.models, b, m))
        for b, m in (("world-clip", "metric.json"), ("world-classifier", "metric.json"), ("world-reward", "reward.json"))}
    _common.write_json(os.path.join(out, "golden.json"), rec)
    log(f"goldens: wrote {out}")
    # `dpoimg score` (the CLI a user runs) prints torch's normalised rewards
    worst = 0.0
    for r in rec["reward"]:
        got = json.loads(run_dpoimg("score", "--json", "--threads", "1", "--device", "cpu", "--reward",
                                    os.path.join(args.models, "world-reward"), r["prompt"],
                                    *[os.path.join(out, n) for n in names], capture=True))
        worst = max(worst, max(abs(g["score"] - w) for g, w in zip(got["results"], r["normalised"])))
    log(f"goldens: `dpoimg score` vs torch normalised reward, 16 (prompt, image) pairs: max|diff| {worst:.3g}")
    if worst > 1e-4:
        sys.exit("dpoimg score disagrees with torch")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    work_default = "/work/scratch/world/judges"

    def common(p):
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--work", default=work_default, help="scratch folder (test renders, torch weights)")
        return p

    def trainer(name, steps, batch, lr, test_count):
        # the two judges trained on rendered images share these flags (defaults differ)
        p = common(sub.add_parser(name))
        p.add_argument("--data", required=True)
        p.add_argument("--out", required=True)
        p.add_argument("--steps", type=int, default=steps)
        p.add_argument("--batch", type=int, default=batch)
        p.add_argument("--lr", type=float, default=lr)
        p.add_argument("--test-count", type=int, default=test_count)
        return p

    trainer("clip", 700, 128, 2e-3, 400).add_argument("--tokenizer", default=DEFAULT_TOKENIZER)
    trainer("classifier", 900, 256, 3e-3, 1000)
    p = common(sub.add_parser("standin-db"))
    p.add_argument("--out", required=True)
    p.add_argument("--count", type=int, default=3000)
    p.add_argument("--variants", type=int, default=5)
    p = common(sub.add_parser("reward"))
    p.add_argument("--db", required=True)
    p.add_argument("--clip", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=150, help="150 = the shipped models/world-reward")
    p.add_argument("--groups", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--tower-lr-scale", type=float, default=0.2,
                   help="the image/text towers' learning rate as a fraction of --lr (0 = frozen)")
    p.add_argument("--cv", type=int, default=0,
                   help="K > 1: only report K-fold cross-validated pairwise accuracy on the train split")
    p = common(sub.add_parser("goldens"))
    p.add_argument("--assets", default=os.path.join(REPO, "tests", "assets", "world-judges"))
    p.add_argument("--models", default=os.path.join(REPO, "models"))
    args = ap.parse_args()
    os.makedirs(args.work, exist_ok=True)
    {"clip": cmd_clip, "classifier": cmd_classifier, "standin-db": cmd_standin_db, "reward": cmd_reward,
     "goldens": cmd_goldens}[args.cmd](args)


if __name__ == "__main__":
    main()
