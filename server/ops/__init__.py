"""Operations: the operator's processes and files around the ServerApp, never the round itself.

`deployment` (server.toml), `provision` (`dbserver init`), `tls` (the operator's CA and server certificate),
`launcher` (SuperLink, `flwr run`, node registration), `stack` (`dbserver start`), `gateway` (the Fleet
gateway, the only public port), `nodesync` (approvals to the SuperLink), `procs` (child processes),
`localfed` (a whole federation on one machine, for tests and benchmarks) and `demo` (`dbserver demo` on it).
"""
