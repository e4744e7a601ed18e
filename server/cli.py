"""`dbserver`: the operator side — SuperLink, federated runs, nodes and the registry."""

from dblocks.shared.clierrors import SafeTyper

from .federation.cli import gateway, init, nodes_app, run_app, start, status
from .ops.demo import demo
from .registry.cli import registry_command, tokens_app

# every uncaught error ends as one line, exit 2 for the operator's to act (a registry that is down), never a
# traceback (its locals or a request's headers could print a token); --debug prints it
app = SafeTyper(help="Operator side: registry, SuperLink and the federation server.", no_args_is_help=True)
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
