"""Build the preference-data test fixtures of dpoimg (tests/assets/data/) from scratch.

Usage:
    /work/pyenv/bin/python tools/make_data_fixtures.py [--out tests/assets/data]

Needs numpy, pillow and pyarrow (no torch, no network, no dataset download). Writes, after wiping --out:

    imagereward/                  an ImageRewardDB folder in the real layout: metadata-train.parquet
                                  (snappy, rank & co. int64) with loose .webp files under
                                  images/train/train_1/, metadata-validation.parquet (zstd, int8) whose
                                  images live only in images/validation/validation_{1,2}.zip
    pickapic.parquet              Pick-a-Pic v2 columns (caption, jpg_0, jpg_1 JPEG bytes, label_0, label_1,
                                  model_0, model_1, ranking_id), two row groups, one 0.5 tie row ...
    pairs.jsonl, jsonl_images/    JSONL {"prompt", "chosen", "rejected"}, image paths relative to the file
    bad/                          one broken input per bad-data case the Rust tests check
    golden/                       PIL reference pixels: raw decodes and resized+cropped f32 CHW arrays
    expected.json                 everything the tests assert, computed here independently of the Rust code

Why the reference preprocessing is written out here instead of calling torchvision: torchvision is not in the
project's Python environment, and what the Diffusion-DPO trainers run is small and fully specified:
`transforms.Resize(size, InterpolationMode.BILINEAR)` on a PIL image is `PIL.Image.resize` to
(short side = size, long side = int(size * long / short)), and `CenterCrop(size)` crops at
`int(round((dim - size) / 2.0))` (Python's round: half to even); then ToTensor (/255) and Normalize(0.5, 0.5).
`torchvision_square()` below is that code path; `cover_resize_crop()` is the rule dpoimg implements (also for
non-square targets); the script asserts they agree on every square case.

Deterministic: the same library versions give the same bytes on every run.
"""
import argparse
import hashlib
import io
import itertools
import json
import os
import shutil
import sys
import uuid
import zipfile

import numpy as np
from PIL import Image
import pyarrow as pa
import pyarrow.parquet as pq

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_TOTAL_BYTES = 2 * 1024 * 1024

RNG = np.random.RandomState(20240611)


def det_uuid():
    return str(uuid.UUID(bytes=RNG.bytes(16), version=4))


def sha256(b):
    return hashlib.sha256(b).hexdigest()


# ------------------------------------------------------------------------------------------------ images

def make_pixels(w, h, mode="RGB"):
    """A smooth gradient plus noise: resampling changes it in every pixel, so a wrong filter shows."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    c = RNG.uniform(0, 1, size=(3, 3))
    chans = []
    for k in range(3):
        v = 255 * (c[k, 0] * xx / max(w - 1, 1) + c[k, 1] * yy / max(h - 1, 1)) / max(c[k, 0] + c[k, 1], 1e-3)
        v = v * 0.7 + RNG.uniform(0, 255 * 0.3, size=(h, w))
        chans.append(v)
    arr = np.clip(np.stack(chans, axis=-1), 0, 255).astype(np.uint8)
    img = Image.fromarray(arr, "RGB")
    if mode == "RGBA":
        alpha = Image.fromarray(RNG.randint(0, 256, size=(h, w)).astype(np.uint8), "L")
        img = img.copy()
        img.putalpha(alpha)
    elif mode == "L":
        img = img.convert("L")
    elif mode == "P":
        img = img.quantize(colors=16, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    return img


def encode(img, fmt):
    buf = io.BytesIO()
    if fmt == "png":
        img.save(buf, format="PNG", optimize=False)
    elif fmt == "jpeg":
        img.save(buf, format="JPEG", quality=90)  # default 4:2:0 subsampling, like real generations
    elif fmt == "webp":
        img.save(buf, format="WEBP", quality=80, method=4)  # lossy, like ImageRewardDB
    else:
        raise ValueError(fmt)
    return buf.getvalue()


def new_image(w, h, fmt, mode="RGB"):
    return encode(make_pixels(w, h, mode), fmt)


# ------------------------------------------------------------------------------- reference preprocessing

RESAMPLE = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}


def to_chw_unit(img):
    """ToTensor + Normalize([0.5], [0.5]) in float32, as torchvision computes it."""
    a = np.asarray(img, dtype=np.uint8).astype(np.float32)
    a = (a / np.float32(255.0) - np.float32(0.5)) / np.float32(0.5)
    return np.ascontiguousarray(a.transpose(2, 0, 1))


def cover_resize_crop(img, tw, th, resample):
    """dpoimg's rule: scale so the image covers tw x th (the binding side becomes exactly the target, the
    other floor(target * other / binding)), PIL resize, centre crop with half-to-even offsets."""
    img = img.convert("RGB")
    w, h = img.size
    if tw * h >= th * w:
        nw, nh = tw, (tw * h) // w
    else:
        nw, nh = (th * w) // h, th
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), RESAMPLE[resample])
    left = int(round((nw - tw) / 2.0))
    top = int(round((nh - th) / 2.0))
    img = img.crop((left, top, left + tw, top + th))
    return to_chw_unit(img)


def torchvision_square(img, size, resample):
    """torchvision's Resize(size) + CenterCrop(size) on a PIL image, transcribed
    (_compute_resized_output_size, F_pil.resize, F.center_crop)."""
    img = img.convert("RGB")
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), RESAMPLE[resample])
    crop_top = int(round((new_h - size) / 2.0))
    crop_left = int(round((new_w - size) / 2.0))
    img = img.crop((crop_left, crop_top, crop_left + size, crop_top + size))
    return to_chw_unit(img)


# -------------------------------------------------------------------------------------- npy / parquet

def save_npy(path, arr):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    np.save(path, np.ascontiguousarray(arr, dtype=np.float32))


IR_COLUMNS = ["image_path", "prompt_id", "prompt", "classification", "image_amount_in_total", "rank",
              "overall_rating", "image_text_alignment_rating", "fidelity_rating"]
IR_INT_COLUMNS = ["image_amount_in_total", "rank", "overall_rating", "image_text_alignment_rating",
                  "fidelity_rating"]


def ir_table(rows, int_type=pa.int64(), overrides=None):
    overrides = overrides or {}
    cols = {}
    for c in IR_COLUMNS:
        vals = [r.get(c) for r in rows]
        if c in overrides:
            cols[c] = overrides[c](vals)
        elif c in IR_INT_COLUMNS:
            cols[c] = pa.array(vals, type=int_type)
        else:
            cols[c] = pa.array(vals, type=pa.string())
    return pa.table(cols)


def ir_pairs(rows):
    """ImageReward's rank_pair_dataset rule: per prompt_id, every i<j with different rank; smaller rank
    preferred; equal ranks skipped. Groups in order of first appearance, rows in file order."""
    groups = {}
    for r in rows:
        groups.setdefault(r["prompt_id"], []).append(r)
    pairs, ties = [], 0
    for pid, items in groups.items():
        for a, b in itertools.combinations(items, 2):
            if a["rank"] == b["rank"]:
                ties += 1
                continue
            w, l = (a, b) if a["rank"] < b["rank"] else (b, a)
            pairs.append({"prompt": w["prompt"], "chosen": w["sha256"], "rejected": l["sha256"]})
    return pairs, ties


def ir_prompt(split, part, prompt_id, prompt, cls, ranks, sizes):
    """Rows (with encoded .webp bytes) for one prompt of ImageRewardDB."""
    rows = []
    for rank, (w, h) in zip(ranks, sizes):
        data = new_image(w, h, "webp")
        rows.append({
            "image_path": f"images/{split}/{split}_{part}/{det_uuid()}.webp",
            "prompt_id": prompt_id, "prompt": prompt, "classification": cls,
            "image_amount_in_total": len(ranks), "rank": rank,
            "overall_rating": int(RNG.randint(1, 8)), "image_text_alignment_rating": int(RNG.randint(1, 8)),
            "fidelity_rating": int(RNG.randint(1, 8)), "bytes": data, "sha256": sha256(data), "part": part,
        })
    return rows


def write_loose(root, rows):
    for r in rows:
        p = os.path.join(root, r["image_path"])
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(r["bytes"])


def write_zips(root, split, rows, skip=()):
    """images/{split}/{split}_{N}.zip holding `{split}_{N}/<uuid>.webp` members (the folder the loose layout
    would have), stored deflated with a fixed timestamp so the bytes are reproducible."""
    by_part = {}
    for r in rows:
        by_part.setdefault(r["part"], []).append(r)
    for part, items in by_part.items():
        zp = os.path.join(root, "images", split, f"{split}_{part}.zip")
        os.makedirs(os.path.dirname(zp), exist_ok=True)
        with zipfile.ZipFile(zp, "w") as z:
            for r in items:
                if r["image_path"] in skip:
                    continue
                member = "/".join(r["image_path"].split("/")[2:])
                info = zipfile.ZipInfo(member, date_time=(2023, 4, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                z.writestr(info, r["bytes"])


def strip(rows):
    return [{k: v for k, v in r.items() if k not in ("bytes", "sha256", "part")} for r in rows]


# --------------------------------------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(REPO_ROOT, "tests", "assets", "data"))
    args = ap.parse_args()
    out = args.out
    if os.path.exists(out):
        shutil.rmtree(out)
    os.makedirs(out)
    expected = {}

    # ---------------------------------------------------------------- ImageRewardDB (train: loose files)
    ir = os.path.join(out, "imagereward")
    train = []
    train += ir_prompt("train", 1, "000001-0001", "a red fox in the snow, digital art", "Animals",
                       [1, 2, 2, 3], [(24, 20), (16, 16), (20, 24), (24, 20)])
    lighthouse = ir_prompt("train", 1, "000002-0002", "a lighthouse at dusk", "Outdoor Scenes",
                           [2, 1, 3], [(16, 16), (24, 20), (12, 10)])
    car = ir_prompt("train", 1, "000003-0003", "A RED vintage car, studio photo", "Objects",
                    [1, 1, 1, 2, 2], [(16, 16), (20, 24), (24, 20), (16, 16), (12, 10)])
    # Interleave one row of another prompt: pairs are formed per prompt_id, not per run of rows.
    train += lighthouse[:2] + car[:1] + lighthouse[2:] + car[1:]
    write_loose(ir, train)
    pq.write_table(ir_table(strip(train)), os.path.join(ir, "metadata-train.parquet"), compression="snappy")
    pairs, ties = ir_pairs(train)
    filt = lambda pred: len(ir_pairs([r for r in train if pred(r)])[0])  # noqa: E731
    expected["imagereward_train"] = {
        "rows": len(train), "pairs": pairs, "ties": ties,
        "filter_contains_red": filt(lambda r: "red" in r["prompt"].lower()),
        "filter_regex_lighthouse": filt(lambda r: r["prompt"].startswith("a l")),
        "filter_ids_000002_000003": filt(lambda r: r["prompt_id"] in ("000002-0002", "000003-0003")),
        "filter_contains_red_and_ids_000002_000003": filt(
            lambda r: "red" in r["prompt"].lower() and r["prompt_id"] in ("000002-0002", "000003-0003")),
    }

    # ------------------------------------------------------------ ImageRewardDB (validation: zips only)
    val = []
    val += ir_prompt("validation", 1, "000101-0001", "an owl reading a book", "Animals",
                     [3, 1, 2, 1], [(24, 20), (16, 16), (20, 24), (16, 16)])
    val += ir_prompt("validation", 2, "000102-0002", "a castle made of glass", "Architecture",
                     [1, 2, 3], [(20, 24), (24, 20), (16, 16)])
    write_zips(ir, "validation", val)
    pq.write_table(ir_table(strip(val), pa.int8()), os.path.join(ir, "metadata-validation.parquet"),
                   compression="zstd")
    pairs, ties = ir_pairs(val)
    expected["imagereward_validation"] = {"rows": len(val), "pairs": pairs, "ties": ties}

    # ----------------------------------------------------------------------------------- Pick-a-Pic
    labels = [1.0, 0.0, 0.5, 1.0, 0.0, 0.5, 1.0]
    sizes = [(24, 20), (16, 16), (20, 24), (12, 10), (24, 20), (16, 16), (20, 24)]
    prows = []
    for i, (lab, (w, h)) in enumerate(zip(labels, sizes)):
        j0, j1 = new_image(w, h, "jpeg"), new_image(h, w, "jpeg")
        prows.append({"caption": f"pick prompt {i}: a cat wearing hat number {i}", "jpg_0": j0, "jpg_1": j1,
                      "label_0": lab, "label_1": 1.0 - lab, "model_0": "sd-1.5", "model_1": "dreamlike",
                      "ranking_id": 1000 + i})

    def pick_table(rows, overrides=None):
        overrides = overrides or {}
        types = {"caption": pa.string(), "jpg_0": pa.binary(), "jpg_1": pa.binary(), "label_0": pa.float64(),
                 "label_1": pa.float64(), "model_0": pa.string(), "model_1": pa.string(),
                 "ranking_id": pa.int64()}
        cols = {}
        for c, t in types.items():
            if c in overrides:
                if overrides[c] is None:
                    continue
                cols[c] = overrides[c]([r.get(c) for r in rows])
            else:
                cols[c] = pa.array([r.get(c) for r in rows], type=t)
        return pa.table(cols)

    pq.write_table(pick_table(prows), os.path.join(out, "pickapic.parquet"), compression="snappy",
                   row_group_size=4)
    ppairs = []
    for r in prows:
        if r["label_0"] == 0.5:
            continue
        a, b = (r["jpg_0"], r["jpg_1"]) if r["label_0"] == 1.0 else (r["jpg_1"], r["jpg_0"])
        ppairs.append({"prompt": r["caption"], "chosen": sha256(a), "rejected": sha256(b),
                       "row": prows.index(r), "ranking_id": r["ranking_id"]})
    expected["pickapic"] = {"rows": len(prows), "pairs": ppairs,
                            "ties": sum(1 for r in prows if r["label_0"] == 0.5)}

    # ---------------------------------------------------------------------------------------- JSONL
    jdir = os.path.join(out, "jsonl_images")
    os.makedirs(jdir)
    jimgs = {
        "a_rgb.png": new_image(24, 20, "png"),
        "a_small.png": new_image(12, 10, "png"),
        "b_rgba.png": new_image(20, 24, "png", "RGBA"),
        "b_gray.png": new_image(16, 16, "png", "L"),
        "c_photo.jpg": new_image(24, 20, "jpeg"),
        "c_palette.png": new_image(16, 16, "png", "P"),
        "d_art.webp": new_image(20, 24, "webp"),
    }
    for name, data in jimgs.items():
        with open(os.path.join(jdir, name), "wb") as f:
            f.write(data)
    jrecords = [
        {"prompt": "a bowl of ramen", "chosen": "jsonl_images/a_rgb.png", "rejected": "jsonl_images/a_small.png"},
        {"prompt": "a robot gardener", "chosen": "jsonl_images/b_gray.png", "rejected": "jsonl_images/b_rgba.png"},
        {"prompt": "a mountain lake", "chosen": "jsonl_images/c_photo.jpg", "rejected": "jsonl_images/c_palette.png",
         "extra_field": "ignored"},
        {"prompt": "a paper boat", "chosen": "jsonl_images/d_art.webp", "rejected": "jsonl_images/a_rgb.png"},
    ]
    with open(os.path.join(out, "pairs.jsonl"), "w") as f:
        for k, r in enumerate(jrecords):
            f.write(json.dumps(r) + "\n")
            if k == 1:
                f.write("\n")  # blank lines are not records
    expected["jsonl"] = {
        "rows": len(jrecords),
        "pairs": [{"prompt": r["prompt"], "chosen": sha256(jimgs[r["chosen"].split("/")[1]]),
                   "rejected": sha256(jimgs[r["rejected"].split("/")[1]])} for r in jrecords],
    }

    # --------------------------------------------------------------------------------------- goldens
    gdir = os.path.join(out, "golden")
    os.makedirs(gdir)
    # (source file relative to out, target w, h, filter, whether our decoder must equal PIL's exactly)
    gcases = [
        ("jsonl_images/a_rgb.png", 16, 16, "bilinear"),     # downscale, odd crop offset (19-16=3 -> 2)
        ("jsonl_images/a_small.png", 16, 16, "bilinear"),   # upscale 12x10 -> 19x16
        ("jsonl_images/b_rgba.png", 16, 16, "bilinear"),    # alpha dropped as PIL's convert("RGB") does
        ("jsonl_images/b_gray.png", 16, 16, "bilinear"),    # no resize: identity path
        ("jsonl_images/b_gray.png", 8, 8, "bilinear"),
        ("jsonl_images/c_palette.png", 8, 8, "bilinear"),
        ("jsonl_images/a_rgb.png", 16, 16, "bicubic"),
        ("jsonl_images/a_rgb.png", 16, 8, "bilinear"),      # non-square target, width binding
        ("jsonl_images/a_small.png", 8, 16, "bilinear"),    # non-square target, height binding
        ("jsonl_images/c_photo.jpg", 16, 16, "bilinear"),   # JPEG 4:2:0: decoder differs from libjpeg-turbo
        ("jsonl_images/d_art.webp", 16, 16, "bilinear"),    # lossy WebP
        (train[0]["image_path"], 16, 16, "bilinear"),
    ]
    goldens = []
    decoded = set()
    for src, tw, th, filt_name in gcases:
        path = os.path.join(ir if src.startswith("images/") else out, src)
        img = Image.open(path)
        img.load()
        ref = cover_resize_crop(img, tw, th, filt_name)
        if tw == th:
            tv = torchvision_square(img, tw, filt_name)
            assert np.array_equal(ref, tv), f"cover rule != torchvision for {src} at {tw}"
        base = os.path.basename(src).replace(".", "_")
        name = f"{base}.{tw}x{th}.{filt_name}.npy"
        save_npy(os.path.join(gdir, name), ref)
        raw_name = f"{base}.raw.npy"
        if raw_name not in decoded:
            decoded.add(raw_name)
            save_npy(os.path.join(gdir, raw_name), np.asarray(img.convert("RGB"), dtype=np.uint8))
        rel_src = os.path.relpath(path, out)
        goldens.append({"source": rel_src, "width": tw, "height": th, "filter": filt_name,
                        "golden": f"golden/{name}", "raw": f"golden/{raw_name}",
                        # image-webp decodes lossy WebP bit-exactly like libwebp; zune-jpeg's 4:2:0 chroma
                        # upsampling rounds differently from libjpeg-turbo's, so JPEG gets a tolerance.
                        "exact_decode": not rel_src.endswith(".jpg"), "sha256": sha256(open(path, "rb").read())})
    expected["golden"] = goldens

    # ---------------------------------------------------------------------------------------- bad data
    bad = os.path.join(out, "bad")
    os.makedirs(bad)
    bexp = {}

    # 1. ImageRewardDB, one loose image file missing.
    d = os.path.join(bad, "ir_missing_image")
    rows = ir_prompt("train", 1, "000201-0001", "a missing image prompt", "Other", [1, 2, 3],
                     [(16, 16), (16, 16), (16, 16)])
    write_loose(d, rows[:1] + rows[2:])
    pq.write_table(ir_table(strip(rows)), os.path.join(d, "metadata-train.parquet"))
    bexp["ir_missing_image"] = {"missing": rows[1]["image_path"], "skip_pairs": len(ir_pairs(rows[:1] + rows[2:])[0]),
                                "skipped_rows": 1}

    # 2. ImageRewardDB validation zip lacking one member.
    d = os.path.join(bad, "ir_zip_member_missing")
    rows = ir_prompt("validation", 1, "000301-0001", "a zip prompt", "Other", [2, 1, 3, 4],
                     [(16, 16)] * 4)
    write_zips(d, "validation", rows, skip={rows[3]["image_path"]})
    pq.write_table(ir_table(strip(rows), pa.int8()), os.path.join(d, "metadata-validation.parquet"))
    bexp["ir_zip_member_missing"] = {"missing": rows[3]["image_path"], "skip_pairs": len(ir_pairs(rows[:3])[0]),
                                     "skipped_rows": 1}

    # 3. ImageRewardDB validation with neither loose files nor the zip.
    d = os.path.join(bad, "ir_zip_missing")
    os.makedirs(d)
    rows = ir_prompt("validation", 1, "000401-0001", "no zip at all", "Other", [1, 2], [(16, 16)] * 2)
    pq.write_table(ir_table(strip(rows), pa.int8()), os.path.join(d, "metadata-validation.parquet"))
    bexp["ir_zip_missing"] = {"zip": "images/validation/validation_1.zip", "skipped_rows": 2}

    # 4. ImageRewardDB with `rank` written as strings (wrong column type).
    d = os.path.join(bad, "ir_rank_string")
    rows = ir_prompt("train", 1, "000501-0001", "string ranks", "Other", [1, 2], [(16, 16)] * 2)
    write_loose(d, rows)
    pq.write_table(ir_table(strip(rows), overrides={"rank": lambda v: pa.array([str(x) for x in v])}),
                   os.path.join(d, "metadata-train.parquet"))

    # 5. ImageRewardDB with a null rank in row 1 (0-based) and a null prompt in row 3.
    d = os.path.join(bad, "ir_null_fields")
    rows = ir_prompt("train", 1, "000601-0001", "null fields", "Other", [1, 2, 3, 4], [(16, 16)] * 4)
    write_loose(d, rows)
    rows_null = strip(rows)
    rows_null[1]["rank"] = None
    rows_null[3]["prompt"] = None
    pq.write_table(ir_table(rows_null), os.path.join(d, "metadata-train.parquet"))
    bexp["ir_null_fields"] = {"skip_pairs": len(ir_pairs([rows[0], rows[2]])[0]), "skipped_rows": 2}

    # 6. ImageRewardDB missing the `rank` column entirely.
    d = os.path.join(bad, "ir_missing_column")
    rows = ir_prompt("train", 1, "000701-0001", "no rank column", "Other", [1, 2], [(16, 16)] * 2)
    write_loose(d, rows)
    pq.write_table(ir_table(strip(rows)).drop(["rank"]), os.path.join(d, "metadata-train.parquet"))

    # 7. A folder that is no dataset at all.
    d = os.path.join(bad, "not_a_dataset")
    os.makedirs(d)
    with open(os.path.join(d, "README.txt"), "w") as f:
        f.write("no metadata-*.parquet here\n")

    # 8. Pick-a-Pic without label_0.
    prow3 = prows[:3]
    pq.write_table(pick_table(prow3, {"label_0": None}), os.path.join(bad, "pick_missing_label.parquet"))
    # 9. Pick-a-Pic with label_0 as strings.
    pq.write_table(pick_table(prow3, {"label_0": lambda v: pa.array([str(x) for x in v])}),
                   os.path.join(bad, "pick_label_string.parquet"))
    # 10. Null caption in row 1, null jpg_1 in row 3 (uncompressed file: exercises the plain codec path).
    nrows = [dict(r) for r in prows[:5]]
    nrows[1]["caption"] = None
    nrows[3]["jpg_1"] = None
    pq.write_table(pick_table(nrows), os.path.join(bad, "pick_null_fields.parquet"), compression="none")
    good = [r for k, r in enumerate(nrows) if k not in (1, 3)]
    bexp["pick_null_fields"] = {"pairs": sum(1 for r in good if r["label_0"] != 0.5),
                                "ties": sum(1 for r in good if r["label_0"] == 0.5), "skipped_rows": 2}
    # 11. label_0 out of range (2.0) and not one of {0, 0.5, 1} (0.3), NaN.
    lrows = [dict(r) for r in prows[:5]]
    lrows[0]["label_0"] = 2.0
    lrows[2]["label_0"] = 0.3
    lrows[4]["label_0"] = float("nan")
    pq.write_table(pick_table(lrows), os.path.join(bad, "pick_bad_label.parquet"))
    good = [r for k, r in enumerate(lrows) if k not in (0, 2, 4)]
    bexp["pick_bad_label"] = {"pairs": sum(1 for r in good if r["label_0"] != 0.5), "skipped_rows": 3,
                              "first_bad_row": 0}
    # 12. Empty Pick-a-Pic file (schema, zero rows).
    pq.write_table(pick_table([]), os.path.join(bad, "pick_empty.parquet"))
    # 13. Truncated JPEG in row 0 jpg_0; non-image bytes in row 1 jpg_1.
    crows = [dict(r) for r in prows[:4]]
    crows[0]["jpg_0"] = crows[0]["jpg_0"][: len(crows[0]["jpg_0"]) // 2]
    crows[1]["jpg_1"] = b"this is not an image, just text bytes"
    pq.write_table(pick_table(crows), os.path.join(bad, "pick_bad_images.parquet"))
    bexp["pick_bad_images"] = {"pairs_unchecked": sum(1 for r in crows if r["label_0"] != 0.5),
                               "pairs_checked": sum(1 for k, r in enumerate(crows) if k > 1 and r["label_0"] != 0.5),
                               "bad_image_rows": 2}
    # 14. A parquet file of some other schema, and bytes that are no parquet at all.
    pq.write_table(pa.table({"a": [1, 2], "b": ["x", "y"]}), os.path.join(bad, "other_schema.parquet"))
    with open(os.path.join(bad, "not_parquet.parquet"), "wb") as f:
        f.write(b"PAR1 but not really a parquet file\n" * 3)
    # 15. Unknown file type.
    with open(os.path.join(bad, "data.csv"), "w") as f:
        f.write("prompt,chosen,rejected\n")

    # JSONL cases (images under bad/images/).
    bimg = os.path.join(bad, "images")
    os.makedirs(bimg)
    ok_png = new_image(16, 16, "png")
    with open(os.path.join(bimg, "ok.png"), "wb") as f:
        f.write(ok_png)
    full = new_image(24, 20, "png")
    with open(os.path.join(bimg, "truncated.png"), "wb") as f:
        f.write(full[: len(full) // 2])
    with open(os.path.join(bimg, "not_an_image.png"), "wb") as f:
        f.write(b"hello, I am a text file with a .png name\n")

    def jl(name, lines):
        with open(os.path.join(bad, name), "w") as f:
            for line in lines:
                f.write(line + "\n")

    okrec = json.dumps({"prompt": "ok", "chosen": "images/ok.png", "rejected": "images/ok.png"})
    # 16. Invalid JSON on line 2.
    jl("jsonl_bad_line.jsonl", [okrec, '{"prompt": "broken", "chosen": ', okrec])
    # 17. Missing "rejected" on line 2, non-string prompt on line 3.
    jl("jsonl_missing_field.jsonl", [okrec, json.dumps({"prompt": "x", "chosen": "images/ok.png"}),
                                     json.dumps({"prompt": 5, "chosen": "images/ok.png", "rejected": "images/ok.png"}),
                                     okrec])
    # 18. Image file that does not exist.
    jl("jsonl_missing_image.jsonl", [okrec, json.dumps({"prompt": "m", "chosen": "images/nope.png",
                                                        "rejected": "images/ok.png"})])
    # 19. Truncated PNG and non-image bytes.
    jl("jsonl_bad_images.jsonl", [okrec,
                                  json.dumps({"prompt": "t", "chosen": "images/truncated.png", "rejected": "images/ok.png"}),
                                  json.dumps({"prompt": "n", "chosen": "images/ok.png",
                                              "rejected": "images/not_an_image.png"})])
    # 20. Empty file.
    jl("jsonl_empty.jsonl", [])
    bexp["jsonl"] = {"ok_sha256": sha256(ok_png)}
    expected["bad"] = bexp

    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1, sort_keys=True)
        f.write("\n")

    total = 0
    for dp, _, fs in os.walk(out):
        total += sum(os.path.getsize(os.path.join(dp, x)) for x in fs)
    print(f"wrote {out}: {total} bytes")
    if total > MAX_TOTAL_BYTES:
        sys.exit(f"fixtures are {total} bytes, over the {MAX_TOTAL_BYTES} byte budget")


if __name__ == "__main__":
    main()
