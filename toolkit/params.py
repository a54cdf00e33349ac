"""A bad argument of a Python call, named as the parameter it is; a command names its flag instead."""

from __future__ import annotations


class ParameterError(ValueError):
    """``message`` names the parameter as ``{name}`` (replaced, never formatted: values may hold braces)."""

    def __init__(self, parameter: str, message: str):
        self.parameter, self.message = parameter, message
        super().__init__(message.replace("{name}", parameter))

    def named(self, name: str) -> ValueError:
        """The same error naming the parameter ``name`` (a command-line flag) instead."""
        return ValueError(self.message.replace("{name}", name))
