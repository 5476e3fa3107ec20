"""The one error type of reading and loading weights (networks.weights, networks.model_folder)."""


class WeightsError(ValueError):
    """A weights file that cannot be used; the message names the file and the fix."""
