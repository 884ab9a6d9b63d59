"""Exception types whose message is shown to the user as one line.

Every error a user can cause (bad file, bad option, bad genotype) is raised as a
subclass of C2FNASError with a message that names the file or value and the problem;
the CLI wrapper prints it without a traceback and exits non-zero.
"""


class C2FNASError(Exception):
    """Base class: the message is the whole story for the user."""


class InputError(C2FNASError):
    """A user-supplied file or folder is unreadable, malformed or inconsistent."""


class GenotypeError(C2FNASError):
    """A genotype breaks a rule of the search space."""


class PlansError(C2FNASError):
    """A plans file is missing, not valid JSON, or fails validation."""


class TaskNotFoundError(C2FNASError):
    """A task id resolves to no folder or to several."""


class PathsError(C2FNASError):
    """A required C2FNAS_* environment variable is not set."""
