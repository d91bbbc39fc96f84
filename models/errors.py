"""Errors that mean "the user's input is wrong": the command line turns them into exit code 2."""


class InputError(ValueError):
    """Bad input found before any work starts. The message names the flag/field/file, the
    value and what is allowed."""


class ConfigError(InputError):
    """A config field holds a value outside what is allowed."""

    def __init__(self, field: str, value, allowed: str):
        self.field, self.value, self.allowed = field, value, allowed
        super().__init__(f"{field}={value!r} is not allowed: {allowed}")
