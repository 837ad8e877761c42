"""Writes the small preference set the trainer's end-to-end tests train on:
tests/assets/train/prefs.jsonl + 16x16 PNGs (the tiny bundle's size).

Preferred images are smooth (a soft disc on a gradient); rejected ones are high-frequency
checkerboards in the same colours. Deterministic: same files on every run.

    /work/pyenv/bin/python tools/make_train_set.py
"""
import json
import math
import os

from PIL import Image

ROOT = os.path.join(os.path.dirname(__file__), "..", "tests", "assets", "train")
COLOURS = [
    ("red", (220, 40, 40)), ("green", (40, 180, 60)), ("blue", (40, 70, 220)),
    ("yellow", (230, 210, 40)), ("purple", (150, 60, 190)), ("orange", (240, 140, 30)),
]
SHAPES = ["circle", "ball"]


def smooth(rgb, k):
    img = Image.new("RGB", (16, 16))
    cx, cy = 7.5 + (k % 3) - 1, 7.5 + (k // 3 % 3) - 1
    for y in range(16):
        for x in range(16):
            d = math.hypot(x - cx, y - cy)
            a = max(0.0, min(1.0, (6.0 - d) / 2.0))
            bg = 235 - 4 * y
            img.putpixel((x, y), tuple(int(a * c + (1 - a) * bg) for c in rgb))
    return img


def rough(rgb, k):
    img = Image.new("RGB", (16, 16))
    for y in range(16):
        for x in range(16):
            on = ((x // (1 + k % 2)) + (y // (1 + k % 2))) % 2 == 0
            img.putpixel((x, y), rgb if on else (20, 20, 20))
    return img


def main():
    os.makedirs(os.path.join(ROOT, "images"), exist_ok=True)
    lines = []
    k = 0
    for name, rgb in COLOURS:
        for shape in SHAPES:
            w, l = f"images/{k:02d}_w.png", f"images/{k:02d}_l.png"
            smooth(rgb, k).save(os.path.join(ROOT, w))
            rough(rgb, k).save(os.path.join(ROOT, l))
            lines.append({"prompt": f"a {name} {shape}", "chosen": w, "rejected": l})
            k += 1
    with open(os.path.join(ROOT, "prefs.jsonl"), "w") as f:
        for row in lines:
            f.write(json.dumps(row) + "\n")
    print(f"{len(lines)} pairs in {ROOT}")


if __name__ == "__main__":
    main()
