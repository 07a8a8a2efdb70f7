"""The error of the training layer."""


class TrainingError(RuntimeError):
    """Training cannot go on; the message says why and what to do."""
