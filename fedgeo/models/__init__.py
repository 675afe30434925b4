"""Next-location models."""

from fedgeo.models.build import build_model
from fedgeo.models.config import ModelConfig
from fedgeo.models.features import FeatureBuilder, SampleIndex
from fedgeo.models.next_location import NextLocationModel

__all__ = ["FeatureBuilder", "ModelConfig", "NextLocationModel", "SampleIndex", "build_model"]
