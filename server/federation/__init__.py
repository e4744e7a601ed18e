"""The federation: a Flower ServerApp that owns the B blocks and the block schedule."""
