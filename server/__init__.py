"""dblocks.server: the operator side — block registry, Flower ServerApp and the `dbserver` CLI."""
