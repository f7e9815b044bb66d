"""Re-ranking models: the interface, the registered kinds, artifacts and the online update."""

from models import dnn as _dnn  # noqa: F401  (registers the "dnn" kind)
from models import gan as _gan  # noqa: F401  (registers the "gan" kind)
from models.artifact import ModelBundle, load_artifact, save_artifact
from models.base import MODEL_REGISTRY, Reranker, get_model_class, register, training_stage_of
from models.online import online_update_batch

__all__ = [
    "MODEL_REGISTRY",
    "ModelBundle",
    "Reranker",
    "get_model_class",
    "load_artifact",
    "online_update_batch",
    "register",
    "save_artifact",
    "training_stage_of",
]
