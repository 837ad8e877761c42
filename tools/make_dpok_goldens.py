"""Golden values for dpoimg's DPOK objective (src/finetune/dpok.rs): per-step log-probabilities of a stochastic
DDIM (eta = 1, CFG) trajectory, the KL regulariser, the DPOK loss of one policy update, its LoRA gradients and the
LoRA weights after one clipped AdamW step, all computed with torch on the tiny bundle.

Usage:
    python tools/make_dpok_goldens.py [--assets DIR]

Writes DIR/golden/dpok/ (default DIR = <repo>/tests/assets):

    dpok.safetensors + dpok.json
        lora.unet.<module>.lora_{A,B}.weight   the policy's LoRA (peft, rank 4, alpha 8, random non-zero)
        uncond, cond                            fixed prompt embeddings [B, 77, 32]
        timesteps                               the DDIM timesteps (diffusers set_timesteps)
        latents                                 [steps + 1, B, 4, 8, 8]: x_T and every x_{t-1}, sampled with diffusers'
                                                DDIMScheduler.step(eta=1, variance_noise=...) from the policy's
                                                CFG-combined eps
        variance_noise                          [steps, B, 4, 8, 8]
        log_prob                                [steps, B]: log N(x_{t-1}; mu_theta(x_t), sigma_t^2), mean over C,H,W
        kl                                      [steps, B]: mean over C,H,W of (eps_theta^cfg - eps_ref^cfg)^2
        update.*                                one DPOK update on 3 transitions (see dpok.json): old log-probs (the
                                                third shifted so that its ratio is clamped), advantages, the loss
                                                terms, every LoRA gradient (and, under update.grad_kl.*,
                                                those of the KL term alone), the gradient norm, the LoRA after
                                                clip_grad_norm_ + torch.optim.AdamW.

The log-probability and the loss follow google-research `dpok/` exactly: `scheduling_ddim_extended.py`
(`step_forward_logprob`: Normal(prev_sample_mean, std_dev_t).log_prob(next_sample).mean over the three
trailing dims, std_dev_t = eta * sqrt(variance)), `pipeline_stable_diffusion_extended.py`
(`forward_calculate_logprob`: UNet on [uncond; cond], CFG, kl = (eps - eps_ref)^2 elementwise) and
`train_online_pg.py` (`_train_policy_func`: ratio = exp(lp - lp_old) clamped to 1 +- ratio_clip,
loss = mean(-reward_weight * adv * ratio) + kl_weight * mean(kl), divided by gradient_accumulation_steps).
The reference's own files are not vendored; the same formulas are written here with torch ops.

Deterministic (seeded, single-threaded torch). Rerun after tools/make_test_assets.py (it rebuilds the tiny bundle).
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402,F401  (offline mode before any Hugging Face import)
from _common import DEFAULT_LORA_TARGETS, REPO_ROOT, fmt_size, save_tensors, write_json  # noqa: E402

import torch  # noqa: E402

STEPS = 4
GUIDANCE = 7.5
ETA = 1.0
BATCH = 2
RANK, ALPHA = 4, 8
REWARD_WEIGHT = 10.0
KL_WEIGHT = 0.01
RATIO_CLIP = 1e-4
ACCUM = 2
CLIP_NORM = 0.1
LR = 1e-3
WEIGHT_DECAY = 0.0
# Everything runs in float64: the goldens are the exact values of the reference's formulas (its float32 run
# would add its own rounding, ~1e-5 relative in the LoRA gradients, to the tolerance budget of the Rust f32
# trainer). The random inputs are drawn in float32 and widened, so they are exactly representable in f32.
DTYPE = torch.float64
# (trajectory step, sample) of each transition in the update batch, and the shift added to its stored
# (old) log-probability: 0 keeps the ratio at 1 (inside the clamp); 0.01 makes it exp(-0.01) (clamped, no gradient).
TRANSITIONS = [(0, 0, 0.0), (3, 1, 0.0), (2, 0, 0.01)]
REWARDS = [0.7, -0.3, 1.2]
BASELINE = 0.25


class Rand:
    def __init__(self, seed):
        self.g = torch.Generator().manual_seed(seed)

    def n(self, *shape, std=1.0):
        return (torch.randn(shape, generator=self.g, dtype=torch.float32) * std).to(DTYPE)


def ddim_logprob(sched, eps, t, x_t, x_prev, eta):
    """DPOK's `step_forward_logprob` (epsilon prediction, no clipping) for per-sample timesteps `t` [B]."""
    stride = sched.config.num_train_timesteps // sched.num_inference_steps
    prev_t = t - stride
    a_t = sched.alphas_cumprod[t]
    mask = (prev_t >= 0).int()
    a_prev = sched.alphas_cumprod[prev_t.clamp(min=0)] * mask + sched.final_alpha_cumprod * (1 - mask)
    b_t = 1 - a_t
    variance = ((1 - a_prev) / b_t) * (1 - a_t / a_prev)
    std = eta * variance ** 0.5
    a_t, a_prev, std = (v[:, None, None, None] for v in (a_t, a_prev, std))
    x0 = (x_t - (1 - a_t) ** 0.5 * eps) / a_t ** 0.5
    mean = a_prev ** 0.5 * x0 + (1 - a_prev - std ** 2) ** 0.5 * eps
    dist = torch.distributions.Normal(mean, std)
    return dist.log_prob(x_prev.detach()).mean(dim=-1).mean(dim=-1).mean(dim=-1)


def cfg_eps(unet, x, t, uncond, cond):
    """UNet on [x; x] with [uncond; cond], then eps_u + g (eps_c - eps_u) (the reference pipeline)."""
    n = x.shape[0]
    tt = t.expand(n) if t.dim() == 0 else t
    out = unet(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([uncond, cond]), return_dict=False)[0]
    eu, ec = out.chunk(2)
    return eu + GUIDANCE * (ec - eu)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--assets", default=os.path.join(REPO_ROOT, "tests", "assets"))
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    assets = os.path.abspath(a.assets)
    out_dir = os.path.join(assets, "golden", "dpok")
    os.makedirs(out_dir, exist_ok=True)

    from diffusers import DDIMScheduler, UNet2DConditionModel
    from peft import LoraConfig
    from safetensors.torch import load_file

    bundle = os.path.join(assets, "tiny-bundle")
    with open(os.path.join(bundle, "unet_config.json")) as f:
        ucfg = json.load(f)
    with open(os.path.join(bundle, "bundle.json")) as f:
        scfg = json.load(f)["scheduler"]

    def load():
        u = UNet2DConditionModel.from_config(ucfg)
        u.load_state_dict(load_file(os.path.join(bundle, "unet.safetensors")))
        return u.eval().to(DTYPE)

    rnd = Rand(20260601)
    policy = load()
    policy.add_adapter(LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=list(DEFAULT_LORA_TARGETS)))
    lora = [(n.replace(".default", ""), p) for n, p in policy.named_parameters() if "lora_" in n]
    with torch.no_grad():
        for _, p in lora:
            p.copy_(rnd.n(*p.shape, std=0.1))
    for name, p in policy.named_parameters():
        p.requires_grad_("lora_" in name)
    reference = load()
    for p in reference.parameters():
        p.requires_grad_(False)

    sched = DDIMScheduler.from_config(scfg)
    sched.set_timesteps(STEPS)
    timesteps = sched.timesteps.clone()

    t = {}
    for name, p in lora:
        t[f"lora.unet.{name}"] = p.detach().clone()
    uncond, cond = rnd.n(BATCH, 77, 32), rnd.n(BATCH, 77, 32)
    x = rnd.n(BATCH, 4, 8, 8) * sched.init_noise_sigma
    latents, noises, log_probs, kls = [x], [], [], []
    with torch.no_grad():
        for ti in timesteps:
            eps = cfg_eps(policy, x, ti, uncond, cond)
            eps_ref = cfg_eps(reference, x, ti, uncond, cond)
            vn = rnd.n(BATCH, 4, 8, 8)
            x_new = sched.step(eps, ti, x, eta=ETA, variance_noise=vn).prev_sample
            log_probs.append(ddim_logprob(sched, eps, ti.expand(BATCH), x, x_new, ETA))
            kls.append(((eps - eps_ref) ** 2).mean(dim=(1, 2, 3)))
            noises.append(vn)
            latents.append(x_new)
            x = x_new
    t.update(uncond=uncond, cond=cond, timesteps=timesteps, latents=torch.stack(latents),
             variance_noise=torch.stack(noises), log_prob=torch.stack(log_probs), kl=torch.stack(kls))

    # one DPOK policy update on a batch of stored transitions (train_online_pg._train_policy_func)
    steps = torch.tensor([s for s, _, _ in TRANSITIONS])
    samples = torch.tensor([b for _, b, _ in TRANSITIONS])
    x_t = torch.stack([latents[s][b] for s, b, _ in TRANSITIONS])
    x_prev = torch.stack([latents[s + 1][b] for s, b, _ in TRANSITIONS])
    tt = timesteps[steps]
    old_lp = torch.stack([log_probs[s][b] + shift for s, b, shift in TRANSITIONS])
    adv = torch.tensor(REWARDS, dtype=DTYPE) - BASELINE
    u_b, c_b = uncond[samples], cond[samples]
    eps = cfg_eps(policy, x_t, tt, u_b, c_b)
    with torch.no_grad():
        eps_ref = cfg_eps(reference, x_t, tt, u_b, c_b)
    kl = (eps - eps_ref) ** 2
    lp = ddim_logprob(sched, eps, tt, x_t, x_prev, ETA)
    ratio = torch.clamp(torch.exp(lp - old_lp), 1.0 - RATIO_CLIP, 1.0 + RATIO_CLIP)
    policy_loss = (-REWARD_WEIGHT * adv.reshape(-1, 1) * ratio.reshape(-1, 1)).mean()
    kl_term = KL_WEIGHT * kl.mean()
    loss = (policy_loss + kl_term) / ACCUM
    # the KL term's own gradient: in the full loss it is small next to the policy term's, so it is checked alone
    grads_kl = torch.autograd.grad(kl_term / ACCUM, [p for _, p in lora], retain_graph=True)
    for (name, _), g in zip(lora, grads_kl):
        t[f"update.grad_kl.unet.{name}"] = g
    grads = torch.autograd.grad(loss, [p for _, p in lora])
    for (name, _), g in zip(lora, grads):
        assert g.abs().max() > 0, f"zero gradient for {name}"
        t[f"update.grad.unet.{name}"] = g
    # the optimiser step as the reference trainer takes it: clip_grad_norm_ then AdamW
    for (_, p), g in zip(lora, grads):
        p.grad = g.clone()
    params = [p for _, p in lora]
    norm = torch.nn.utils.clip_grad_norm_(params, CLIP_NORM)
    opt = torch.optim.AdamW(params, lr=LR, weight_decay=WEIGHT_DECAY, foreach=False)
    opt.step()
    for name, p in lora:
        t[f"update.after.unet.{name}"] = p.detach().clone()
    t.update({"update.log_prob": lp.detach(), "update.old_log_prob": old_lp, "update.ratio": ratio.detach(),
              "update.advantage": adv, "update.kl": kl.detach().mean(dim=(1, 2, 3))})
    meta = dict(
        bundle="tiny-bundle", steps=STEPS, guidance=GUIDANCE, eta=ETA, batch=BATCH, rank=RANK, alpha=ALPHA,
        targets=list(DEFAULT_LORA_TARGETS),
        update=dict(transitions=[[s, b] for s, b, _ in TRANSITIONS], old_log_prob_shift=[s for *_, s in TRANSITIONS],
                    rewards=REWARDS, baseline=BASELINE, reward_weight=REWARD_WEIGHT, kl_weight=KL_WEIGHT,
                    ratio_clip=RATIO_CLIP, accum=ACCUM, clip_norm=CLIP_NORM, lr=LR, weight_decay=WEIGHT_DECAY,
                    betas=[0.9, 0.999], eps=1e-8, loss=loss.item(), policy_loss=policy_loss.item(),
                    kl_term=kl_term.item(), kl_mean=kl.mean().item(), grad_norm=norm.item()),
        log_prob_reduction="mean over C,H,W (DPOK step_forward_logprob)",
        kl_reduction="mean over C,H,W per sample; the loss uses the mean over B,C,H,W")
    save_tensors(os.path.join(out_dir, "dpok.safetensors"), t)
    write_json(os.path.join(out_dir, "dpok.json"), meta)
    print(json.dumps(meta["update"], indent=1))
    print("log_prob", t["log_prob"])
    print("kl", t["kl"])
    print("ratio", ratio)
    for fn in sorted(os.listdir(out_dir)):
        print(f"  {fn:30s} {fmt_size(os.path.getsize(os.path.join(out_dir, fn)))}")


if __name__ == "__main__":
    main()
