"""Photo parsing on top of the models: the `HumanParser` facade, prediction helpers (`predict`),
try-on masks (`masks`), try-on dataset formats (`tryon_formats`), quality flags (`quality`),
reports (`report`), video smoothing (`temporal`) and the extractor's output writer (`outputs`).

Layering: networks (models, contracts) <- datasets <- utils (training support) <- inference <-
the scripts. Only `HumanParser` is re-exported here; import the other modules directly.
"""

from inference.api import HumanParser

__all__ = ["HumanParser"]
