"""Loss functions over tensors (no models, no config): feature-map distances, the Jacobian
random-projection loss, the Shafahi GAP-L2 loss, temperature-scaled distillation losses, the KL to a
teacher's soft labels of the robust distillation family, and MACD's KL + normalised-L2 robustness loss."""

from rkd.losses.contrastive import feature_kl, macd_robust_loss, normalized_l2
from rkd.losses.distillation import soft_cross_entropy, temperature_cross_entropy
from rkd.losses.feature_maps import FEATURE_DISTANCES, feature_distance, feature_map_loss
from rkd.losses.gap_l2 import gap_l2_loss
from rkd.losses.jacobian import (
    JACOBIAN_ESTIMATORS,
    PROJECTION_REDUCTIONS,
    jacobian_projection_loss,
    random_unit_like,
)
from rkd.losses.nt_xent import nt_xent
from rkd.losses.soft_label_kl import KL_REDUCTIONS, soft_label_kl

__all__ = [
    "FEATURE_DISTANCES", "JACOBIAN_ESTIMATORS", "KL_REDUCTIONS", "PROJECTION_REDUCTIONS", "feature_kl",
    "macd_robust_loss",
    "normalized_l2", "nt_xent", "feature_distance", "feature_map_loss", "gap_l2_loss",
    "jacobian_projection_loss", "random_unit_like", "soft_cross_entropy", "soft_label_kl", "temperature_cross_entropy",
]
