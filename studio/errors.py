"""Errors whose message is one sentence a user can act on; the UI shows it as it is."""


class StudioError(Exception):
    """A failure the user can understand and act on."""


class UnknownModel(StudioError):
    pass


class ModelUnavailable(StudioError):
    pass


class LoadFailed(StudioError):
    pass


class InvalidRequest(StudioError):
    pass


class Cancelled(StudioError):
    pass
