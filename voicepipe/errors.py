"""Named errors. Each is raised before anything is written and is never retried.

Celery ships a failed task's exception to result readers as (type name, args),
so every error keeps a single message argument: a producer that has only Celery
installed still sees ``InvalidInput('event_type: unknown event type ...')``.
"""

from __future__ import annotations


class VoicepipeError(Exception):
    """Base of the errors that refuse a request and change nothing."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InvalidInput(VoicepipeError):
    """An argument is malformed; the message names the field."""

    @classmethod
    def field(cls, name: str, problem: str) -> InvalidInput:
        return cls(f"{name}: {problem}")


class PermissionDenied(VoicepipeError):
    """The requester is unknown or is not platform staff."""


class ArtifactNotFound(VoicepipeError):
    """No artifact has the given id."""


class RetryNotAllowed(VoicepipeError):
    """The artifact is not in a state that can be retried."""


class RetryLimitExceeded(VoicepipeError):
    """The artifact has used all its retry attempts."""


class RetryRateLimited(VoicepipeError):
    """The artifact was retried as often as allowed in the last hour (VOICEPIPE_MAX_RETRIES_PER_HOUR)."""


class DeadLetterNotFound(VoicepipeError):
    """No dead letter has the given id."""


class DeadLettered(Exception):
    """A write task gave up and parked its message as a dead letter (not a refusal).

    Its FAILURE state tells result readers and Flower where the message went.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class SettingsError(Exception):
    """A configuration variable has a value that cannot be used."""


# The errors a task must not retry: they describe the request, not the weather.
REFUSALS: tuple[type[VoicepipeError], ...] = (
    InvalidInput,
    PermissionDenied,
    ArtifactNotFound,
    RetryNotAllowed,
    RetryRateLimited,
    RetryLimitExceeded,
)
