"""The trained artifact: a versioned directory of plain arrays and JSON that needs no torch to read.

Only the loader side is imported here (numpy + json + pydantic), because the index builder and the candidate
service import this package; the writer, plots and projector export are imported from their modules.
"""

from trainer.artifact.loader import Artifact, list_versions
from trainer.artifact.manifest import ARTIFACT_SCHEMA_VERSION, ArtifactError, ArtifactManifest

__all__ = ["ARTIFACT_SCHEMA_VERSION", "Artifact", "ArtifactError", "ArtifactManifest", "list_versions"]
