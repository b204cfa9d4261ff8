"""Model families behind factories that fail loudly on unknown names: image-level backbones (our VGG-style
CNN or any timm model) with linear heads, and smp segmentation networks."""

from raysearch.models.factory import MODEL_FAMILIES, backbone_from, create_backbone
from raysearch.models.heads import HeadNet
from raysearch.models.segmentation import ARCHITECTURES, ENCODERS, SegmentationNet, create_segmentation_model

__all__ = ["ARCHITECTURES", "ENCODERS", "MODEL_FAMILIES", "HeadNet", "SegmentationNet", "backbone_from",
           "create_backbone", "create_segmentation_model"]
