"""Geography: the global adjacency prior, prior embeddings, places as a GeoDataFrame.

* :func:`build_adjacency_prior` / :class:`AdjacencyPrior` - the server's prior, built
  only from public place coordinates (kNN, Gaussian kernel, symmetric normalization).
* :func:`spectral_embedding`, :func:`coordinate_features` - seeds for place embeddings.
* :func:`places_to_geodataframe`, :func:`export_places` - GeoPandas view and export.

See docs/prior.md.
"""

from fedgeo.geo.embedding import coordinate_features, knn_connectivity, spectral_embedding
from fedgeo.geo.places import export_places, places_to_geodataframe
from fedgeo.geo.prior import (
    EARTH_RADIUS_KM,
    AdjacencyPrior,
    PriorConfig,
    build_adjacency_prior,
)

__all__ = [
    "EARTH_RADIUS_KM",
    "AdjacencyPrior",
    "PriorConfig",
    "build_adjacency_prior",
    "coordinate_features",
    "export_places",
    "knn_connectivity",
    "places_to_geodataframe",
    "spectral_embedding",
]
