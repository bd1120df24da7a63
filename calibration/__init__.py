"""What one GPU iteration costs: registries, fitted per-op models, composed latency.

Typical use::

    from calibration import LatencyModel, Batch
    lm = LatencyModel("glm-4.7", "h200_sxm", tp=4, dtype="fp8")
    lm.iteration_time(Batch(decode_kv=[4096] * 64))
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

from calibration.errors import ComemInputError, KernelDataError, UnknownNameError

if TYPE_CHECKING:
    from calibration.latency import Batch, LatencyModel
    from calibration.model_spec import ModelSpec
    from calibration.profile import Profile, available_profiles, default_profile
    from calibration.registry import GPUS, MODELS, GpuSpec, get_gpu, get_model
    from calibration.static import predict_static_latency

#: names resolved on first use, so ``import calibration.errors`` (every command's start)
#: does not import the latency model
_LAZY = {
    "Batch": "calibration.latency",
    "LatencyModel": "calibration.latency",
    "Profile": "calibration.profile",
    "available_profiles": "calibration.profile",
    "default_profile": "calibration.profile",
    "GPUS": "calibration.registry",
    "MODELS": "calibration.registry",
    "GpuSpec": "calibration.registry",
    "ModelSpec": "calibration.model_spec",
    "get_gpu": "calibration.registry",
    "get_model": "calibration.registry",
    "predict_static_latency": "calibration.static",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'calibration' has no attribute {name!r}")
    return getattr(import_module(module), name)


__all__ = [
    "GPUS",
    "MODELS",
    "Batch",
    "ComemInputError",
    "GpuSpec",
    "KernelDataError",
    "LatencyModel",
    "ModelSpec",
    "Profile",
    "UnknownNameError",
    "available_profiles",
    "default_profile",
    "get_gpu",
    "get_model",
    "predict_static_latency",
]
