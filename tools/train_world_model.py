"""Train the shipped world model: a small SD-1.x-architecture pipeline learned from scratch on the
shapes world (`dpoimg world`), on the CPU.

Usage:
    python tools/world_dataset.py /work/scratch/world/train.npz            # the training images
    nice -n 19 python tools/train_world_model.py --data /work/scratch/world/train.npz \
        --work /work/scratch/world/run [--vae-steps N | --vae-minutes 11] [--unet-steps N | --unet-minutes 47]
    python tools/export_bundle.py /work/scratch/world/run/pipeline models/world --name world-sd1 \
        --width 32 --height 32 --steps 25 --guidance 6 --sampler ddim

Stages (each resumable: re-running the same command continues from WORK/ckpt-*.pt):
1. tokenizer: CLIP BPE restricted to the world's words (vocabulary of 512 byte tokens + the merges
   that build every grammar word into one token + BOS/EOS; 49,408 rows would be 95 % of the text
   encoder for ~30 words). Any text still tokenizes (byte fallback), so `CLIPTokenizerFast`, the
   `tokenizers` crate and the engine read it like SD's.
2. AutoencoderKL 32x32x3 -> 16x16x4 (VAE factor 2; 16/32 channels, 0.17 M parameters: a quarter of
   the reference probe's cost per step for flat-colour shapes), loss MSE + 0.5 L1 + 1e-4 KL. Its latent scale
   is measured on the data (1 / std of sampled latents) and stored as `scaling_factor`.
3. UNet2DConditionModel (32/64/128 channels, cross-attention at every level, 16x16 included, so
   position words can steer where things go) and CLIPTextModel (3 layers, width 64) trained
   together with the DDPM loss on the `--noise-schedule` (`sd`: SD's scaled_linear with epsilon
   prediction, the shipped model's; `ddpm`: linear with near-zero terminal SNR; `ddpm-v`: the same
   with v-prediction; see SCHEDULES for why), 10 % empty captions so that classifier-free guidance works, offset noise 0.1
   (flat backgrounds), AdamW, EMA 0.999 of both; the EMA weights are exported with a DDIM scheduler
   of the schedule in use at the last step. A run may switch schedule when resumed: the checkpoint
   records the step each one started at, and the log prints the commands that reproduce it.

Reproducibility: all randomness comes from seeded generators indexed by (stage, step), so a run
with the same step counts gives the same weights whether or not it was interrupted and resumed
(on the same torch build and thread count). `--*-minutes` instead stops a stage by wall time;
the log records the step counts reached, and passing them back as `--vae-steps/--unet-steps`
reproduces the run. Everything is logged (appended) to --log.
"""
import argparse
import copy
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402,F401  (offline mode before any Hugging Face import)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

# The grammar's words (src/world/scene.rs): each becomes one token.
WORLD_WORDS = ("a small large red green blue yellow purple cyan circle square triangle in the center at top "
               "bottom left right of above below on background white black gray").split()
MAX_LENGTH = 32  # the longest grammar prompt is 12 words = 14 tokens with BOS/EOS
UNET_KW = dict(sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
               block_out_channels=(32, 64, 128),
               down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
               up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
               cross_attention_dim=64, attention_head_dim=4, norm_num_groups=8)
VAE_KW = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
              up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), block_out_channels=(16, 32),
              layers_per_block=1, latent_channels=4, norm_num_groups=8, sample_size=32)
SCHED_KW = dict(num_train_timesteps=1000, clip_sample=False)  # the rest per schedule, below
# Noise schedules (`--noise-schedule`): (DDPMScheduler settings, DDIM settings for the exported pipeline).
# `sd` is SD-1.x's, the shipped model's: its last training timestep keeps sqrt(abar) = 0.068 of the
# signal (0.085 at the first `leading` DDIM step, 961). On flat-colour shapes that leak tells where
# the object is, so the model learned to read placement from x_T instead of from the text
# (tools/world_leak_probe.py: a render's leak at position A under a prompt asking for B lands at A
# 45 % of the time, at B 7 %). `ddpm` is DDPM's linear schedule (Ho et al. 2020; terminal sqrt(abar)
# = 0.0064), sampled with `trailing` spacing so that DDIM starts at t = 999 where training ends (Lin
# et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed"); it removes the leak
# (A 17 %, chance 11 %) but placement still is not learned, because the epsilon loss weights an
# error in the predicted image by SNR, about 4e-5 at the steps where placement is decided. `ddpm-v`
# adds v-prediction (Salimans & Ho 2022), whose loss weights that error by SNR + 1.
SCHEDULES = {
    "sd": (dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", prediction_type="epsilon"),
           dict(set_alpha_to_one=False, steps_offset=1)),
    "ddpm": (dict(beta_start=0.0001, beta_end=0.02, beta_schedule="linear", prediction_type="epsilon"),
             dict(set_alpha_to_one=False, steps_offset=1, timestep_spacing="trailing")),
    "ddpm-v": (dict(beta_start=0.0001, beta_end=0.02, beta_schedule="linear", prediction_type="v_prediction"),
               dict(set_alpha_to_one=False, steps_offset=1, timestep_spacing="trailing")),
}

LOG = None


def text_encoder(tok):
    from transformers import CLIPTextConfig, CLIPTextModel
    return CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4,
        max_position_embeddings=MAX_LENGTH, hidden_act="quick_gelu", projection_dim=64,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))


def init_from_bundle(args, tok, vck, uck):
    """Start this run's checkpoints from an exported bundle (tools/bundle_weights.py reads its weights
    back and checks them against its graphs): the VAE stage counts as done, the UNet stage resumes at
    --init-step on the bundle's noise schedule with a fresh optimiser (its moments are not exported),
    re-warmed over the first 200 steps. The EMA starts from the bundle's weights, which are EMA weights."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    import bundle_weights
    if os.path.exists(vck) or os.path.exists(uck):
        sys.exit(f"--init-bundle: {args.work} already holds checkpoints; resume without --init-bundle or use an "
                 f"empty --work")
    with open(os.path.join(args.init_bundle, "bundle.json"), encoding="utf-8") as f:
        bundle = json.load(f)
    sched = bundle.get("scheduler", {})
    named = [n for n, (kw, _) in SCHEDULES.items() if all(sched.get(k) == v for k, v in kw.items())]
    if not named:
        sys.exit(f"--init-bundle: {args.init_bundle}'s scheduler {sched} is none of {sorted(SCHEDULES)}")
    vae, unet, te = AutoencoderKL(**VAE_KW), UNet2DConditionModel(**UNET_KW), text_encoder(tok)
    worst = bundle_weights.load_bundle(args.init_bundle, unet, te, vae, MAX_LENGTH)
    P(f"init: {args.init_bundle} read back; max |onnx - torch| {worst}; its schedule {named[0]}, "
      f"counted as step {args.init_step}; its VAE scaling_factor {bundle.get('vae', {}).get('scaling_factor')} "
      f"(kept; the latents stage below also reports the one it measures)")
    vopt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    torch.save(dict(model=vae.state_dict(), opt=vopt.state_dict(), step=0, elapsed=0.0, done=True,
                    init_bundle=args.init_bundle,
                    scaling_factor=float(bundle["vae"]["scaling_factor"])), vck)
    opt = torch.optim.AdamW(list(unet.parameters()) + list(te.parameters()), lr=args.lr, weight_decay=0.01,
                            betas=(0.9, 0.99))
    torch.save(dict(unet=unet.state_dict(), te=te.state_dict(), opt=opt.state_dict(), ema_u=unet.state_dict(),
                    ema_t=te.state_dict(), step=args.init_step, elapsed=0.0, schedules=[[0, named[0]]],
                    warm_from=args.init_step, init_bundle=args.init_bundle), uck)


def P(*a):
    s = time.strftime("%H:%M:%S ") + " ".join(str(x) for x in a)
    print(s, flush=True)
    if LOG:
        LOG.write(s + "\n")
        LOG.flush()


def bytes_to_unicode():
    """GPT-2/CLIP's byte -> printable character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) + list(
        range(ord("\xae"), ord("\xff") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def _bpe(word, ranks):
    """CLIP's BPE on one lower-case word (pieces, last one with </w>)."""
    parts = list(word[:-1]) + [word[-1] + "</w>"]
    while len(parts) > 1:
        pairs = [(ranks.get((parts[i], parts[i + 1]), 1 << 30), i) for i in range(len(parts) - 1)]
        r, i = min(pairs)
        if r == 1 << 30:
            break
        a, b = parts[i], parts[i + 1]
        out, j = [], 0
        while j < len(parts):
            if j < len(parts) - 1 and parts[j] == a and parts[j + 1] == b:
                out.append(a + b)
                j += 2
            else:
                out.append(parts[j])
                j += 1
        parts = out
    return parts


def write_tokenizer(dst):
    """vocab.json + merges.txt of a CLIP BPE whose merges turn every world word into one token.
    Merges are added until BPE (lowest rank first, as CLIP) yields one piece per word: a word's
    pieces can be captured by another word's earlier merge ("re" of "red" inside "green"), so the
    loop appends the merge of the first two current pieces until nothing splits."""
    from transformers import CLIPTokenizerFast
    os.makedirs(dst, exist_ok=True)
    merges, ranks = [], {}
    changed = True
    while changed:
        changed = False
        for w in WORLD_WORDS:
            parts = _bpe(w, ranks)
            if len(parts) > 1:
                m = (parts[0], parts[1])
                ranks[m] = len(merges)
                merges.append(m)
                changed = True
    base = list(bytes_to_unicode().values())
    vocab = base + [v + "</w>" for v in base]
    for m in merges:
        t = "".join(m)
        if t not in vocab:
            vocab.append(t)
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    with open(os.path.join(dst, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump({t: i for i, t in enumerate(vocab)}, f, ensure_ascii=False)
    with open(os.path.join(dst, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "".join(" ".join(m) + "\n" for m in merges))
    # transformers 5: vocab_file= silently gives an empty vocabulary; from_pretrained reads the files
    tok = CLIPTokenizerFast.from_pretrained(dst, model_max_length=MAX_LENGTH)
    ids = tok(" ".join(WORLD_WORDS)).input_ids
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id and len(ids) == len(WORLD_WORDS) + 2, ids
    assert len(set(ids[1:-1])) == len(WORLD_WORDS)
    tok.save_pretrained(dst)
    return tok


def main():
    global LOG
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help=".npz from tools/world_dataset.py")
    ap.add_argument("--work", required=True, help="checkpoints and the final diffusers pipeline (WORK/pipeline)")
    ap.add_argument("--log", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "logs",
                                                  "train_world_model.log"))
    ap.add_argument("--seed", type=int, default=0)
    # 1 thread: next to other jobs on 2 cores (and under nice), torch's 2-thread kernels wait for a
    # descheduled partner thread at every barrier; measured 3-4x slower per step than 1 thread
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--bs", type=int, default=32, help="UNet batch size")
    ap.add_argument("--vae-bs", type=int, default=32)
    ap.add_argument("--min-snr", type=float, default=5.0, help="min-SNR-gamma loss weighting (0: plain MSE)")
    ap.add_argument("--vae-steps", type=int, default=0)
    ap.add_argument("--vae-minutes", type=float, default=11)
    ap.add_argument("--vae-lr", type=float, default=1e-3)
    ap.add_argument("--unet-steps", type=int, default=0)
    ap.add_argument("--unet-minutes", type=float, default=47)
    ap.add_argument("--lr", type=float, default=6e-4)
    ap.add_argument("--ckpt-minutes", type=float, default=5, help="checkpoint interval")
    ap.add_argument("--snapshot", default="", help="write the current checkpoints' diffusers pipeline (EMA "
                    "weights) to this folder and exit, without training (the VAE stage must be done)")
    ap.add_argument("--noise-schedule", choices=sorted(SCHEDULES), default="sd",
                    help="training noise schedule from this run's current step on (see SCHEDULES); the "
                         "checkpoint records which steps used which")
    ap.add_argument("--snapshot-weights", choices=("ema", "raw"), default="ema",
                    help="which UNet/text-encoder weights --snapshot writes (raw: the optimiser's, for a "
                         "quick look soon after a schedule switch, when the EMA still averages in the old ones)")
    ap.add_argument("--ema-decay", type=float, default=0.999,
                    help="EMA decay of the exported weights (a short continuation from --init-bundle wants a shorter "
                         "memory, e.g. 0.995, or the export still averages in the bundle it started from)")
    ap.add_argument("--stop-at", default="", help="HH:MM (local) wall-clock deadline for the UNet stage")
    ap.add_argument("--init-bundle", default="", help="start an empty --work from this exported bundle's weights "
                    "(e.g. models/world) instead of from scratch; see init_from_bundle")
    ap.add_argument("--init-step", type=int, default=None, help="with --init-bundle (required there): the UNet "
                    "steps the bundle was trained for (its training log says; models/world: 6300)")
    args = ap.parse_args()
    if args.init_bundle and args.init_step is None:
        ap.error("--init-bundle needs --init-step N, the UNet steps the bundle was trained for (its training log's "
                 "'saved ... unet steps N' line; models/world: 6300), so the warm-up and the schedule record "
                 "continue from there")
    if args.init_step is not None and not args.init_bundle:
        ap.error("--init-step only applies with --init-bundle")
    torch.set_num_threads(args.threads)
    os.makedirs(args.work, exist_ok=True)
    os.makedirs(os.path.dirname(args.log), exist_ok=True)
    LOG = open(args.log, "a")
    P("=" * 20, "train_world_model.py", " ".join(sys.argv[1:]))
    P(f"torch {torch.__version__}, threads {args.threads}")

    from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel, StableDiffusionPipeline

    d = np.load(args.data)
    images = torch.from_numpy(d["images"]).permute(0, 3, 1, 2).contiguous()  # uint8 N,3,32,32
    prompts = [str(p) for p in d["prompts"]]
    N = len(prompts)
    P(f"data {args.data}: {N} images, {len(set(prompts))} prompts")

    tok = write_tokenizer(os.path.join(args.work, "tokenizer"))
    vck = os.path.join(args.work, "ckpt-vae.pt")
    uck = os.path.join(args.work, "ckpt-unet.pt")
    if args.init_bundle:
        init_from_bundle(args, tok, vck, uck)
    uniq = sorted(set(prompts))
    pid = {p: i for i, p in enumerate(uniq)}
    ids_all = tok(uniq + [""], padding="max_length", max_length=MAX_LENGTH, truncation=True,
                  return_tensors="pt").input_ids
    prompt_idx = torch.tensor([pid[p] for p in prompts])
    empty_idx = len(uniq)
    P(f"tokenizer: vocab {len(tok)}, max_length {MAX_LENGTH}, e.g. {tok('a red circle above a blue square').input_ids}")

    def x_of(idx):
        return images[idx].float() / 127.5 - 1

    def batch_idx(stage, step, bs):
        g = np.random.default_rng([args.seed, stage, step])
        return torch.from_numpy(g.integers(0, N, bs))

    def gen(stage, step):
        return torch.Generator().manual_seed(args.seed * 1_000_003 + stage * 100_000_019 + step)

    npar = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731

    # ------------------------------------------------------------------ VAE
    torch.manual_seed(args.seed)
    vae = AutoencoderKL(**VAE_KW)
    vopt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    vstep, velapsed, vdone = 0, 0.0, False
    bundle_sf = None  # an --init-bundle run's latent scale, kept (see the latents stage)
    if os.path.exists(vck):
        s = torch.load(vck, weights_only=False)
        vae.load_state_dict(s["model"]); vopt.load_state_dict(s["opt"])
        vstep, velapsed, vdone = s["step"], s["elapsed"], s["done"]
        bundle_sf = s.get("scaling_factor")
        P(f"vae: resumed at step {vstep} ({velapsed / 60:.1f} min), done={vdone}")
    P(f"vae {npar(vae) / 1e6:.3f} M params")

    def save_vae(done):
        tmp = vck + ".tmp"
        torch.save(dict(model=vae.state_dict(), opt=vopt.state_dict(), step=vstep, elapsed=velapsed, done=done), tmp)
        os.replace(tmp, vck)

    if args.snapshot and not vdone:
        sys.exit("--snapshot: the VAE stage is not finished yet; nothing to snapshot")
    if not vdone:
        vae.train()
        t0 = time.time() - velapsed
        last_ck = time.time()
        la = []
        while True:
            velapsed = time.time() - t0
            if (args.vae_steps and vstep >= args.vae_steps) or (not args.vae_steps and velapsed > args.vae_minutes * 60):
                break
            x = x_of(batch_idx(1, vstep, args.vae_bs))
            post = vae.encode(x).latent_dist
            z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen(1, vstep))
            rec = vae.decode(z).sample
            kl = post.kl().mean() / (4 * 16 * 16)
            loss = F.mse_loss(rec, x) + 0.5 * F.l1_loss(rec, x) + 1e-4 * kl
            for g_ in vopt.param_groups:
                g_["lr"] = args.vae_lr * min(1.0, (vstep + 1) / 100)
            vopt.zero_grad(); loss.backward(); vopt.step(); vstep += 1
            la.append(F.mse_loss(rec, x).item())
            if vstep % 100 == 0:
                P(f"vae step {vstep} mse {np.mean(la[-100:]):.5f} kl {kl.item():.2f} {vstep / max(velapsed, 1e-9):.2f} it/s "
                  f"{velapsed / 60:.1f} min")
            if time.time() - last_ck > args.ckpt_minutes * 60:
                save_vae(False); last_ck = time.time()
        save_vae(True)
        P(f"vae done: {vstep} steps in {velapsed:.0f} s")
    vae.eval()
    for p in vae.parameters():
        p.requires_grad_(False)

    # latents of every image, once (the encoder is frozen now): mean and std of q(z|x)
    lat_path = os.path.join(args.work, "latents.pt")
    if os.path.exists(lat_path):
        lat = torch.load(lat_path)
    else:
        t0 = time.time()
        means, stds = [], []
        with torch.no_grad():
            for i in range(0, N, 512):
                post = vae.encode(x_of(torch.arange(i, min(N, i + 512)))).latent_dist
                means.append(post.mean); stds.append(post.std)
        mean, std = torch.cat(means), torch.cat(stds)
        z = mean + std * torch.randn(mean.shape, generator=gen(2, 0))
        sf = float(1.0 / z.std())
        if bundle_sf is not None:
            # a continuation keeps the bundle's latent scale: its UNet learned latents of that scale,
            # and a changed data set (e.g. --faded) would move the measured one
            P(f"latents: measured scaling_factor {sf:.4f}; keeping the --init-bundle's {bundle_sf}")
            sf = bundle_sf
        with torch.no_grad():
            idx = torch.arange(0, N, max(1, N // 512))[:512]
            rec = vae.decode(mean[idx]).sample
            mse = F.mse_loss(rec, x_of(idx)).item()
        lat = dict(mean=mean, std=std, sf=sf, mse=mse)
        torch.save(lat, lat_path)
        P(f"latents: {N} encoded in {time.time() - t0:.0f} s; std {z.std():.4f} mean {z.mean():.4f} -> "
          f"scaling_factor {sf:.4f}; reconstruction mse (posterior mean, 512 images) {mse:.5f}")
    sf = lat["sf"]
    vae.register_to_config(scaling_factor=sf)

    # ------------------------------------------------------------------ UNet + text encoder
    torch.manual_seed(args.seed + 1)
    unet = UNet2DConditionModel(**UNET_KW)
    torch.manual_seed(args.seed + 2)
    te = text_encoder(tok)
    P(f"unet {npar(unet) / 1e6:.3f} M params, text encoder {npar(te) / 1e6:.3f} M params")
    params = list(unet.parameters()) + list(te.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01, betas=(0.9, 0.99))
    ema_u, ema_t = copy.deepcopy(unet).eval(), copy.deepcopy(te).eval()
    step, elapsed, warm_from = 0, 0.0, 0
    if os.path.exists(uck):
        s = torch.load(uck, weights_only=False)
        unet.load_state_dict(s["unet"]); te.load_state_dict(s["te"]); opt.load_state_dict(s["opt"])
        ema_u.load_state_dict(s["ema_u"]); ema_t.load_state_dict(s["ema_t"])
        step, elapsed, warm_from = s["step"], s["elapsed"], s.get("warm_from", 0)
        segments = s.get("schedules", [[0, "sd"]])
        P(f"unet: resumed at step {step} ({elapsed / 60:.1f} min); schedules so far {segments}")
    else:
        segments = []
    if not args.snapshot and (not segments or segments[-1][1] != args.noise_schedule):
        if segments and SCHEDULES[segments[-1][1]][0]["prediction_type"] != SCHEDULES[args.noise_schedule][0][
                "prediction_type"]:
            # the output means something else from here on: averaging it with the old weights is noise
            ema_u.load_state_dict(unet.state_dict()); ema_t.load_state_dict(te.state_dict())
            P("unet: EMA restarted from the current weights (prediction type changed)")
        segments.append([step, args.noise_schedule])
        P(f"unet: noise schedule {args.noise_schedule} from step {step}")
    schedule = segments[-1][1] if segments else args.noise_schedule
    ema_params = list(ema_u.parameters()) + list(ema_t.parameters())

    def save_unet():
        tmp = uck + ".tmp"
        torch.save(dict(unet=unet.state_dict(), te=te.state_dict(), opt=opt.state_dict(), ema_u=ema_u.state_dict(),
                        ema_t=ema_t.state_dict(), step=step, elapsed=elapsed, schedules=segments,
                        warm_from=warm_from), tmp)
        os.replace(tmp, uck)

    stop_at = None
    if args.stop_at:
        hh, mm = map(int, args.stop_at.split(":"))
        lt = time.localtime()
        stop_at = time.mktime((lt.tm_year, lt.tm_mon, lt.tm_mday, hh, mm, 0, 0, 0, -1))
        if stop_at <= time.time():  # a deadline past midnight
            stop_at += 86400
    sched_kw = {**SCHED_KW, **SCHEDULES[schedule][0]}
    sched = DDPMScheduler(**sched_kw)
    snr_all = sched.alphas_cumprod / (1 - sched.alphas_cumprod)
    v_pred = sched.config.prediction_type == "v_prediction"
    unet.train(); te.train()
    t0 = time.time() - elapsed
    t_run, step_run = time.time(), step  # this process's rate (a resumed or bundle-started run counts from here)
    last_ck = time.time()
    la = []
    warm = 200
    while not args.snapshot:
        elapsed = time.time() - t0
        if args.unet_steps and step >= args.unet_steps:
            break
        if not args.unet_steps and elapsed > args.unet_minutes * 60:
            break
        if stop_at and time.time() > stop_at:
            P(f"stopping at the --stop-at deadline {args.stop_at}")
            break
        idx = batch_idx(3, step, args.bs)
        g = gen(3, step)
        z = (lat["mean"][idx] + lat["std"][idx] * torch.randn(lat["mean"][idx].shape, generator=g)) * sf
        drop = torch.rand(args.bs, generator=g) < 0.1
        pidx = torch.where(drop, torch.full_like(idx, empty_idx), prompt_idx[idx])
        emb = te(ids_all[pidx])[0]
        noise = torch.randn(z.shape, generator=g) + 0.1 * torch.randn(z.shape[0], z.shape[1], 1, 1, generator=g)
        t = torch.randint(0, 1000, (args.bs,), generator=g)
        pred = unet(sched.add_noise(z, noise, t), t, emb).sample
        target = sched.get_velocity(z, noise, t) if v_pred else noise
        if args.min_snr > 0:
            # min-SNR-gamma (Hang et al. 2023): the loss weighted so that an error in the predicted
            # image counts min(SNR, gamma) (epsilon) or min(SNR + 1, gamma) (v) times, which stops
            # the many low-noise steps from dominating; it converges several times faster, and
            # compute is what this CPU run is short of. The v form keeps weight 1 at the
            # high-noise steps (the epsilon form's SNR there is what left placement unlearned).
            snr = snr_all[t]
            weight_of = snr + 1 if v_pred else snr
            w = torch.clamp(weight_of, max=args.min_snr) / weight_of
            loss = (w * ((pred - target) ** 2).mean(dim=(1, 2, 3))).mean()
        else:
            loss = F.mse_loss(pred, target)
        for g_ in opt.param_groups:
            g_["lr"] = args.lr * min(1.0, (step - warm_from + 1) / warm)
        opt.zero_grad(); loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step(); step += 1
        dcy = min(args.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, p in zip(ema_params, params):
                pe.lerp_(p, 1 - dcy)
        la.append(loss.item())
        if step % 100 == 0:
            P(f"unet step {step} loss {np.mean(la[-100:]):.4f} {(step - step_run) / max(time.time() - t_run, 1e-9):.2f} it/s "
              f"{elapsed / 60:.1f} min")
        if time.time() - last_ck > args.ckpt_minutes * 60:
            save_unet(); last_ck = time.time()
    if args.snapshot:
        la = []
    else:
        save_unet()
    P(f"unet done: {step} steps in {elapsed:.0f} s; loss (last 200) {np.mean(la[-200:]) if la else float('nan'):.4f}")

    # ------------------------------------------------------------------ diffusers pipeline (EMA weights)
    out = args.snapshot or os.path.join(args.work, "pipeline")
    scheduler = DDIMScheduler(**sched_kw, **SCHEDULES[schedule][1])
    raw = args.snapshot and args.snapshot_weights == "raw"
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=te if raw else ema_t, tokenizer=tok,
                                   unet=unet if raw else ema_u, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(out)
    init = (f"--init-bundle {args.init_bundle} --init-step {args.init_step} " if args.init_bundle else "")
    P(f"saved {out} (vae steps {vstep}, unet steps {step}, scaling_factor {sf:.4f}); reproduce with "
      f"{init}--vae-steps {vstep} --unet-steps {step}, noise schedules {segments} (step, --noise-schedule)")


if __name__ == "__main__":
    main()
