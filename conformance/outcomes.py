"""How a check ends other than by passing: the exceptions every part of the suite raises."""


class CheckFailed(Exception):
    """The registry did something the spec forbids (or failed to do what it requires)."""


class NotSupported(Exception):
    """The registry signalled that it omits a feature the spec lets it omit."""
