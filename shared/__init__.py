"""dblocks.shared: product code used by server and client — noise schedule, block models, sampler,
training, data and the block wire format."""
