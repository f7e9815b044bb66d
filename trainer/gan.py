"""Adversarial fine-tuning of a pre-trained DNN, IRGAN-style (Wang et al., SIGIR 2017).

Two networks of the DNN architecture start from the same pre-trained weights:

* the generator G defines p_G(i | user, history) = softmax_i(s_G(i) / T) over all items and is
  trained by policy gradient (REINFORCE): it samples items and is rewarded by the
  discriminator's log-odds s_D(i) that the item is a real next item. As in IRGAN's item
  recommendation, samples for the generator's update are drawn from the mixture
  (1 - lambda) p_G + lambda * [the true item] and re-weighted by p_G / mixture (importance
  sampling), so the true item is always explored. The per-example mean reward is subtracted as a
  baseline, which leaves the gradient's expectation unchanged and lowers its variance.
* the discriminator D is a binary classifier, sigmoid(s_D): the true next item of each training
  example against items sampled from p_G (a sample equal to the true item is not counted as a fake).

Each batch takes one D step then one G step. After every epoch both networks are evaluated on the
internal validation split, and the epoch whose `serve` network ("generator" or "discriminator") has
the best validation NDCG@10 is kept. The generator's entropy and the number of distinct items among
its samples are logged each epoch; adversarial training stops (keeping the best epoch so far) on a
non-finite loss or when the samples collapse onto a few items.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from models.dnn import DNNReranker
from trainer.data import TrainingExamples, ValidationSplit
from trainer.validation import evaluate_split

NETWORKS = ("generator", "discriminator")


def _generator_logits(g: DNNReranker, users: torch.Tensor, hist: torch.Tensor, temperature: float) -> torch.Tensor:
    """[B] users, [B, H] histories -> [B, n_items] logits over item rows 1..n_items."""
    u = g.user_repr(g.embed_users(users), hist)
    return g.score_all(u)[:, 1:] / temperature


def _d_loss(
    d: DNNReranker,
    users: torch.Tensor,
    hist: torch.Tensor,
    items: torch.Tensor,
    fakes: torch.Tensor,
    weights: torch.Tensor,
    kind: str,
) -> torch.Tensor:
    """Weighted loss of D: items [B] are real, fakes [B, S] are not (unless equal to the item).

    kind "bce": sigmoid cross-entropy, real 1 and each fake 0 (IRGAN's discriminator).
    kind "softmax": cross-entropy of picking the real item among itself and the fakes.
    """
    u = d.user_repr(d.embed_users(users), hist)
    s = d.score(u, torch.cat([items.unsqueeze(1), fakes], dim=1))
    is_fake = fakes != items.unsqueeze(1)
    if kind == "bce":
        fake_loss = (F.softplus(s[:, 1:]) * is_fake).sum(1) / is_fake.sum(1).clamp_min(1)
        per_row = F.softplus(-s[:, 0]) + fake_loss
    elif kind == "softmax":
        masked = torch.cat([s[:, :1], s[:, 1:].masked_fill(~is_fake, -torch.inf)], dim=1)
        per_row = torch.logsumexp(masked, dim=1) - s[:, 0]
    else:
        raise ValueError(f"unknown gan_d_loss {kind!r}; use 'bce' or 'softmax'")
    return (weights * per_row).sum() / weights.sum()


def _g_loss(
    d: DNNReranker,
    logits: torch.Tensor,
    users: torch.Tensor,
    hist: torch.Tensor,
    items: torch.Tensor,
    weights: torch.Tensor,
    n_samples: int,
    lam: float,
) -> torch.Tensor:
    """REINFORCE loss of G with importance sampling and a per-example mean baseline.

    Args:
        d: The discriminator (not differentiated).
        logits: [B, I] G's tempered logits over item rows 1..I, with gradient.
        users, hist, items, weights: [B], [B, H], [B], [B] the batch.
        n_samples: S samples per example.
        lam: Share of the true item in the sampling mixture.

    Returns:
        Scalar loss whose gradient is -E[w_IS * (reward - baseline) * grad log p_G].
    """
    logp = F.log_softmax(logits, dim=1)
    with torch.no_grad():
        p = logp.exp()
        mix = (1.0 - lam) * p
        mix.scatter_add_(1, (items - 1).unsqueeze(1), torch.full_like(items, lam, dtype=p.dtype).unsqueeze(1))
        cols = torch.multinomial(mix, n_samples, replacement=True)
        ud = d.user_repr(d.embed_users(users), hist)
        reward = d.score(ud, cols + 1)  # log-odds of "real" under D
        adv = (reward - reward.mean(dim=1, keepdim=True)) * (p.gather(1, cols) / mix.gather(1, cols))
    per_row = -(logp.gather(1, cols) * adv).mean(dim=1)
    return (weights * per_row).sum() / weights.sum()


def fit_gan(
    pretrained: DNNReranker,
    ex: TrainingExamples,
    val: ValidationSplit,
    hp: Mapping[str, Any],
    rng: np.random.Generator,
    log: Callable[[str], None],
) -> tuple[DNNReranker, dict[str, Any], dict[str, Any]]:
    """Adversarial training from a pre-trained network; returns the chosen served network.

    Args:
        pretrained: Trained model (left untouched); G and D start as copies of it.
        ex: Training examples; only positive ones (label 1) take part.
        val: Internal validation split; when empty, the last epoch is served.
        hp: Hyper-parameters, the "gan" kind's defaults (`models.gan.GAN_DEFAULT_HPARAMS`) included.
        rng: Shuffles the examples.
        log: One line per epoch.

    Returns:
        (served network, in train mode, of the pre-trained model's class; metrics: "ndcg@10",
        "hr@10" of the served checkpoint, "pretrained_ndcg@10", "served" (the network's
        name), "best_epoch" (0 when no adversarial epoch completed);
        info: "epochs" run, "stopped" reason, and "log", one dict per epoch with losses,
        validation metrics of both networks, generator entropy and distinct sampled items).

    Raises:
        ValueError: Bad `serve` or no positive example.
    """
    serve = str(hp["serve"])
    if serve not in NETWORKS:
        raise ValueError(f"serve must be one of {NETWORKS}, got {serve!r}")
    g, d = copy.deepcopy(pretrained), copy.deepcopy(pretrained)
    for net in (g, d):
        net.requires_grad_(True)
        # Item features are fixed metadata (a buffer), so nothing else needs unfreezing.
        net.train()
    n_items = g.n_items
    pos = np.flatnonzero(ex.labels > 0)
    if pos.size == 0:
        raise ValueError("no positive training example for adversarial training")
    users_t = torch.from_numpy(ex.users[pos])
    items_t = torch.from_numpy(ex.items[pos])
    weights_t = torch.from_numpy(ex.weights[pos])
    hist_t = torch.from_numpy(ex.history[pos].astype(np.int64))
    n = pos.size
    bs = max(1, min(int(hp["gan_batch_size"]), n))
    S, T, lam = int(hp["gan_samples"]), float(hp["gan_temperature"]), float(hp["gan_sample_lambda"])
    d_kind, n_uniform = str(hp["gan_d_loss"]), int(hp["gan_d_uniform"])
    opt_g = torch.optim.Adam(g.parameters(), lr=float(hp["gan_lr_g"]))
    opt_d = torch.optim.Adam(d.parameters(), lr=float(hp["gan_lr_d"]))
    min_distinct = max(2, math.ceil(float(hp["gan_min_distinct_share"]) * n_items))

    has_val = len(val) > 0
    m0 = evaluate_split(pretrained, val) if has_val else {}
    pre_ndcg = m0.get("ndcg@10", math.nan)
    if has_val:
        log(f"gan epoch   0 (pre-trained) val ndcg@10 {pre_ndcg:.4f} hr@10 {m0['hr@10']:.4f}")
    best: dict[str, Any] = {"ndcg": -math.inf, "epoch": 0, "metrics": {}, "state": None}
    history: list[dict[str, Any]] = []
    stopped = "max epochs"
    epoch = 0
    for epoch in range(1, int(hp["gan_epochs"]) + 1):
        te = time.perf_counter()
        perm = torch.from_numpy(rng.permutation(n))
        counts = torch.zeros(n_items, dtype=torch.int64)
        sum_d = sum_g = sum_h = 0.0
        finite = True
        for a in range(0, n, bs):
            idx = perm[a : a + bs]
            u, h, it, w = users_t[idx], hist_t[idx], items_t[idx], weights_t[idx]
            logits = _generator_logits(g, u, h, T)
            with torch.no_grad():
                fakes = torch.multinomial(F.softmax(logits, dim=1), S, replacement=True)
                counts += torch.bincount(fakes.reshape(-1), minlength=n_items)
                if n_uniform:
                    # Uniform fakes keep D ranking arbitrary items low, as it must at serving time.
                    fakes = torch.cat([fakes, torch.randint(0, n_items, (fakes.shape[0], n_uniform))], dim=1)
            loss_d = _d_loss(d, u, h, it, fakes + 1, w, d_kind)
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
            loss_g = _g_loss(d, logits, u, h, it, w, S, lam)
            with torch.no_grad():
                logp = F.log_softmax(logits, dim=1)
                entropy = float(-(logp.exp() * logp).sum(1).mean())
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()
            ld, lg = float(loss_d.detach()), float(loss_g.detach())
            if not (math.isfinite(ld) and math.isfinite(lg) and math.isfinite(entropy)):
                finite = False
                break
            k = idx.numel()
            sum_d, sum_g, sum_h = sum_d + ld * k, sum_g + lg * k, sum_h + entropy * k
        distinct = int((counts > 0).sum())
        top_share = float(counts.max()) / max(1, int(counts.sum()))
        rec: dict[str, Any] = {
            "epoch": epoch,
            "d_loss": sum_d / n,
            "g_loss": sum_g / n,
            "gen_entropy": sum_h / n,
            "gen_distinct_items": distinct,
            "gen_top_item_share": round(top_share, 4),
        }
        if not finite:
            rec["non_finite"] = True
            history.append(rec)
            stopped = f"non-finite loss in epoch {epoch}"
            log(f"gan epoch {epoch:3d}: {stopped}; keeping epoch {best['epoch']}")
            break
        line = (
            f"gan epoch {epoch:3d} d_loss {rec['d_loss']:.4f} g_loss {rec['g_loss']:+.4f} "
            f"gen entropy {rec['gen_entropy']:.2f} nats (uniform {math.log(n_items):.2f}) "
            f"distinct {distinct}/{n_items} top {top_share:.3f}"
        )
        if has_val:
            mg, md = evaluate_split(g, val), evaluate_split(d, val)
            rec.update({"generator_ndcg@10": mg["ndcg@10"], "discriminator_ndcg@10": md["ndcg@10"]})
            line += f" val ndcg@10 G {mg['ndcg@10']:.4f} D {md['ndcg@10']:.4f}"
            m = mg if serve == "generator" else md
        else:
            m = {}
        history.append(rec)
        log(f"{line} ({time.perf_counter() - te:.1f}s)")
        ndcg = m.get("ndcg@10", 0.0)
        if not has_val or ndcg > best["ndcg"]:
            net = g if serve == "generator" else d
            best = {
                "ndcg": ndcg,
                "epoch": epoch,
                "metrics": m,
                "state": {k: v.detach().clone() for k, v in net.state_dict().items()},
            }
        if distinct < min_distinct:
            stopped = f"generator collapsed in epoch {epoch} ({distinct} distinct items sampled)"
            log(f"gan: {stopped}; keeping epoch {best['epoch']}")
            break
        if has_val and epoch - best["epoch"] >= int(hp["gan_patience"]):
            stopped = "patience"
            break
    served = copy.deepcopy(pretrained)
    if best["state"] is not None:
        served.load_state_dict(best["state"])
    else:
        stopped += "; no adversarial epoch completed, serving the pre-trained network"
    metrics = {
        "ndcg@10": best["metrics"].get("ndcg@10", pre_ndcg if best["state"] is None else math.nan),
        "hr@10": best["metrics"].get("hr@10", m0.get("hr@10", math.nan) if best["state"] is None else math.nan),
        "pretrained_ndcg@10": pre_ndcg,
        "served": serve,
        "best_epoch": best["epoch"],
    }
    return served, metrics, {"epochs": epoch, "stopped": stopped, "log": history}
