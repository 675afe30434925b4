"""FedGeo: federated next-location prediction with a global geographic adjacency prior.

The library (data, geography, models, metrics, training) is free of Flower; the
Flower ClientApp lives in ``client/`` and the ServerApp and strategies in ``server/``.
"""

__version__ = "0.1.0"
