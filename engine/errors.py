"""The one exception family users can cause. The UI and the CLI show ``str(err)`` as is."""


class Mu2Error(Exception):
    """Something the user can fix: the message says what was wrong and what to do."""


class Mu2InputError(Mu2Error):
    """The input is not a usable CT volume (or not a usable file of the expected kind)."""


class Mu2CheckpointError(Mu2Error):
    """A weights folder or state dict cannot be loaded as a Mu2 model."""
