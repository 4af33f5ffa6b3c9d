"""The exception tree of nudge.

NudgeError                      root: catch this at the CLI edge
├── ConfigError                 a setting or CLI argument is invalid
│   └── UsageError              an argument conflicts with the settings (exit status 2, like argparse)
├── StackError                  the local Kafka/Redis stack cannot start or stop
├── DependencyUnavailable       Kafka or Redis cannot be reached (names the address)
├── DeliveryError               a message could not be produced to Kafka
└── InputError                  a file or record given by the user is malformed

Bad *events* are not exceptions: they are values (`events.Rejection`) that the
stream sends to the dead-letter topic.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DeliveryError",
    "DependencyUnavailable",
    "InputError",
    "NudgeError",
    "StackError",
    "UsageError",
]


class NudgeError(Exception):
    """Root of every error nudge raises on purpose."""


class ConfigError(NudgeError):
    """A setting or a command-line argument is invalid."""


class UsageError(ConfigError):
    """A command-line argument is invalid given the settings (checked before any work starts)."""


class StackError(NudgeError):
    """The local stack (Kafka broker, Redis server) cannot be managed."""


class DependencyUnavailable(NudgeError):
    """A service we depend on cannot be reached; the message names its address."""


class DeliveryError(NudgeError):
    """Kafka refused or failed to acknowledge a produced message."""


class InputError(NudgeError):
    """A file or a record given by the user cannot be read."""
