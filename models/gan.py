"""The "gan" kind: the served network of an adversarially trained generator/discriminator pair.

Both networks have the DNN architecture (see `trainer.gan`); the artifact holds the one chosen on
validation, so scoring, artifacts and the online update treat it exactly like a "dnn" model.
"""

from __future__ import annotations

from models.base import register
from models.dnn import DNNReranker


@register("gan")
class GANReranker(DNNReranker):
    """A `DNNReranker` trained adversarially (IRGAN-style); same hyper-parameters and weights."""
