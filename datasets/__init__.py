"""Datasets for human parsing: label sets (``labels``), LIP-layout data (``lip``), transforms,
DeepFashion preprocessing helpers (``deepfashion``) and procedural demo people (``synthetic``).

Only the label-set API is re-exported here; import the other modules directly.
"""

from datasets.label_set import IGNORE_INDEX, LabelSet
from datasets.labels import LabelConfig, load_label_config

__all__ = ["IGNORE_INDEX", "LabelConfig", "LabelSet", "load_label_config"]
