"""`dbserver`: the operator side — SuperLink, federated runs, nodes and the registry."""

import typer

from .federation.cli import nodes_app, run_app, start, status

app = typer.Typer(help="Operator side: registry, SuperLink and the federation server.", no_args_is_help=True)
app.command()(start)
app.command()(status)
app.add_typer(run_app, name="run")
app.add_typer(nodes_app, name="nodes")

if __name__ == "__main__":
    app()
