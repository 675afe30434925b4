"""The FedGeo device agent: an on-device check-in store, keys, and a Flower SuperNode."""
