"""Command-line entry point of dblocks.privacy."""

import typer

app = typer.Typer(help="Privacy researchers' leakage audits against block updates.", no_args_is_help=True)


@app.callback()
def main() -> None:
    """Privacy researchers' leakage audits against block updates."""


if __name__ == "__main__":
    app()
