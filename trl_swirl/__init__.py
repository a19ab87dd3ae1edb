"""trl-swirl: SWIRL (Self-Improving World Modelling with Latent Actions, arXiv 2602.06130) as a TRL extension."""

__version__ = "0.1.0.dev0"

from .config import SwirlConfig
from .partner import PartnerReward
from .templates import DEFAULT_FWM_TEMPLATE, DEFAULT_IDM_TEMPLATE, SwirlTemplates
from .loop import SwirlLoopConfig, label_dataset, run_loop, warm_start
from .trainer import SwirlTrainer

__all__ = [
    "DEFAULT_FWM_TEMPLATE",
    "DEFAULT_IDM_TEMPLATE",
    "PartnerReward",
    "SwirlConfig",
    "SwirlLoopConfig",
    "SwirlTemplates",
    "SwirlTrainer",
    "label_dataset",
    "run_loop",
    "warm_start",
]
