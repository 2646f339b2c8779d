"""The offline model registry: manifests, publishing, aliases and a verified local cache.

Models are objects in the models bucket, described by a manifest and addressed by an alias;
services load them through :class:`models.loader.ModelCache` and never from a model hub.
"""

from models import offline as _offline  # noqa: F401 - sets the offline flags first
