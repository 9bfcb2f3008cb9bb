"""The one exception type for problems the user can fix."""


class LtstgError(Exception):
    """A user-fixable problem: bad recipe, missing or corrupt artifact, bad data.

    The message is one sentence naming the thing and, where possible, the fix. Several
    independent problems (e.g. all recipe validation errors) are one message, one line each.
    """


class TimeLimitReached(LtstgError):
    """`--time-limit` ran out at an epoch's end: the checkpoint just written keeps the progress, and rerunning
    the same command continues from it. Not a failure of the input, so it exits 3, not 2."""

    exit_code = 3
