"""The one exception tree: every domain error is an AllianceError with a message a user can act on."""

from __future__ import annotations


class AllianceError(Exception):
    """Base of every error Alliance Watch raises on purpose."""


class ConfigError(AllianceError):
    """Settings or clinics.toml are missing or wrong."""


class ProfileError(ConfigError):
    """A clinic's export profile is invalid; the message names the clinic and the key."""


class ExportRejected(AllianceError):
    """An export cannot be read at all; nothing from it is loaded."""

    def __init__(self, file_name: str, problem: str) -> None:
        from alliance.redaction import plain_text  # the message goes to terminals, the ledger and logs

        self.file_name = plain_text(file_name)
        self.problem = plain_text(problem)
        file_name, problem = self.file_name, self.problem
        super().__init__(f"{file_name}: {problem}")


class ExportGone(AllianceError):
    """The file left the inbox before this run got to it (another run took it)."""


class KeyMissing(ConfigError):
    """No pseudonym key is configured."""


class StorageError(AllianceError):
    """The warehouse cannot be written or read."""


class WarehouseBusy(StorageError):
    """Another process holds the writer lock longer than the configured wait."""
