"""Errors that are the user's to fix: reported as one line naming the config key, no traceback."""


class UserError(Exception):
    """A bad config value, missing file or incompatible input. The message says what to change."""
