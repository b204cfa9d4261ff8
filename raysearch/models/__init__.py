"""Model families behind one factory: `create_backbone(family, ...)` fails loudly on unknown names."""

from raysearch.models.factory import MODEL_FAMILIES, create_backbone

__all__ = ["MODEL_FAMILIES", "create_backbone"]
