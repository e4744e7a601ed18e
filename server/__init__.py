"""dblocks.server: the operator side — the Flower ServerApp (`federation`), the block registry (`registry`),
operations around them (`ops`) and the `dbserver` CLI."""
