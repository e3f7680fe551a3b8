"""Exception family of the model package."""


class ModelError(Exception):
    """Base class of every error the model package raises on purpose."""


class BackboneWeightsError(ModelError):
    """Backbone weights are missing, unreadable or do not match the architecture."""


class ArtifactError(ModelError):
    """A model artifact is corrupt, tampered with, or does not match what is expected."""


class DatasetError(ModelError):
    """Images or an MVTec-layout folder cannot be used."""
