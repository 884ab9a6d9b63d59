"""The one error type of the deployment package (a user error: one line, exit 2)."""

from c2fnas_auto.errors import C2FNASError


class DeploymentError(C2FNASError):
    """An export, a model file or an install cannot be done as asked."""
