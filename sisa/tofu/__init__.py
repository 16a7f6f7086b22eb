"""TOFU, the unlearning field's benchmark (Maini et al. 2024): its data as sisa ships it (`splits`:
the six base configs, gzipped and sha256-checked, or the dataset by its Hugging Face name), its
measures exactly as locuslab/open-unlearning defines them (`metrics`: pure functions), and
TOFU's table for a model version of a store (`scoring`: the served mixture's answer losses and
greedy answers through `sisa.serving`).
"""

from sisa.tofu import metrics, scoring, splits
from sisa.tofu.metrics import UTILITY_PARTS, model_utility
from sisa.tofu.scoring import (
    TofuScores,
    TofuSets,
    TofuSettings,
    evaluate_ensemble,
    forget_quality,
    load_sets,
)
from sisa.tofu.splits import HUB_NAME, chat_record, forget_authors, read_config

__all__ = [
    "HUB_NAME",
    "TofuScores",
    "TofuSets",
    "TofuSettings",
    "UTILITY_PARTS",
    "chat_record",
    "evaluate_ensemble",
    "forget_authors",
    "forget_quality",
    "load_sets",
    "metrics",
    "model_utility",
    "read_config",
    "scoring",
    "splits",
]
