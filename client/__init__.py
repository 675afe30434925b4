"""FedGeo client side: the Flower ClientApp, the device agent and client-side algorithm math."""
