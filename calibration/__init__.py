"""What one GPU iteration costs: registries, fitted per-op models, composed latency.

Typical use::

    from calibration import LatencyModel, Batch
    lm = LatencyModel("glm-4.7", "h200_sxm", tp=4, dtype="fp8")
    lm.iteration_time(Batch(decode_kv=[4096] * 64))
"""

from calibration.errors import ComemInputError, KernelDataError, UnknownNameError
from calibration.latency import Batch, LatencyModel
from calibration.profile import Profile, available_profiles, default_profile
from calibration.registry import GPUS, MODELS, GpuSpec, ModelSpec, get_gpu, get_model
from calibration.static import predict_static_latency

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
