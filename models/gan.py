"""The "gan" kind: the served network of an adversarially trained generator/discriminator pair.

Both networks have the DNN architecture; after the common training, the kind's extra stage
`trainer.gan.fit_gan` trains them adversarially and the artifact holds the one chosen on
validation, so scoring, artifacts and the online update treat it exactly like a "dnn" model.
"""

from __future__ import annotations

from typing import Any

from models.base import register
from models.dnn import DNNReranker

# Chosen on the internal validation split (NDCG@10) of the ML-100K leave-one-out training events,
# starting from the dnn defaults' model (0.497), one seed, 4 adversarial epochs each:
# lr 1e-3 (G, D): best G 0.462, D 0.249 after one epoch; lr 1e-4: G 0.497, D 0.477 after one
# epoch, then both decline (G 0.449, D 0.336 at epoch 4); D "softmax": G 0.495, D 0.485; softmax
# plus 16 uniform fakes: G 0.496, D 0.485. Starting from a less trained DNN (4 epochs, 0.473) the
# adversarial epochs lowered both (best G 0.446 at lr 3e-4, 0.431 at 1e-3). The generator is
# always the better network, and the first adversarial epoch is usually the best one.
GAN_DEFAULT_HPARAMS: dict[str, Any] = {
    "serve": "generator",  # "generator" | "discriminator": the network the artifact holds
    "gan_epochs": 5,
    "gan_patience": 2,
    "gan_lr_g": 1e-4,
    "gan_lr_d": 1e-4,
    "gan_samples": 16,  # items sampled per example, for D's fakes and for G's policy gradient
    "gan_temperature": 1.0,
    "gan_sample_lambda": 0.2,  # weight of the true item in G's sampling mixture
    "gan_d_loss": "bce",  # "bce" (IRGAN) or "softmax" (the real item among the fakes)
    "gan_d_uniform": 0,  # uniformly drawn fakes added to G's for each D example
    "gan_batch_size": 512,
    # Collapse: fewer distinct sampled items in an epoch than this share of all items (at least 2).
    "gan_min_distinct_share": 0.02,
}


@register("gan", defaults=GAN_DEFAULT_HPARAMS, stage="trainer.gan:fit_gan")
class GANReranker(DNNReranker):
    """A `DNNReranker` trained adversarially (IRGAN-style); same hyper-parameters and weights."""
