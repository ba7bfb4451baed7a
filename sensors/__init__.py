"""Observation -> token vectors: encoders (ViT, state, object-centric, point cloud), projectors into the
LM width, and open3d tabletop segmentation.  Takes arrays and camera parameters, never a simulator."""

from sensors.base import (
    ENCODERS,
    MAX_OBJECTS,
    Encoder,
    EncoderConfig,
    ImageConfig,
    build_encoder,
    collate,
    register_encoder,
)
from sensors.object_centric import ObjectConfig, ObjectEncoder
from sensors.pointcloud import PointCloudConfig, PointCloudEncoder
from sensors.projectors import build_projector
from sensors.segmentation import Detection, assign_to_slots, backproject, segment_objects
from sensors.state import PerceivedEncoder, StateConfig, StateEncoder
from sensors.vit import ViTConfig, ViTEncoder

__all__ = [
    "ENCODERS", "MAX_OBJECTS", "Detection", "Encoder", "EncoderConfig", "ImageConfig", "ObjectConfig",
    "ObjectEncoder", "PerceivedEncoder", "PointCloudConfig", "PointCloudEncoder", "StateConfig", "StateEncoder",
    "ViTConfig", "ViTEncoder", "assign_to_slots", "backproject", "build_encoder", "build_projector", "collate",
    "register_encoder", "segment_objects",
]
