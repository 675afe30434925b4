"""Geography: the adjacency prior, prior embeddings, places as a GeoDataFrame."""
