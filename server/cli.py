"""`dbserver`: the operator side — SuperLink, federated runs, nodes and the registry."""

import typer

from .federation.cli import gateway, init, nodes_app, run_app, start, status
from .ops.demo import demo
from .registry.cli import registry_command, tokens_app

app = typer.Typer(
    help="Operator side: registry, SuperLink and the federation server.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)  # locals would print private data
app.command()(init)
app.command()(start)
app.command()(gateway)
app.command()(status)
app.command()(demo)
app.add_typer(run_app, name="run")
app.add_typer(nodes_app, name="nodes")
app.command("registry")(registry_command)
app.add_typer(tokens_app, name="tokens")


if __name__ == "__main__":
    app()
