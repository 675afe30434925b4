"""FedGeo server side: the Flower ServerApp and its federated strategies (``server.strategies``)."""
