"""`dblocks`: local DiffusionBlocks training, evaluation and sampling (no federation involved)."""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import torch
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .data import DataError, load_dataset
from .presets import PRESETS, get_preset

app = typer.Typer(help="Local DiffusionBlocks training, evaluation and sampling.", no_args_is_help=True)
console = Console(soft_wrap=True)


@contextmanager
def block_progress(label: str):
    """A rich progress bar fed by (block, step, total, loss) callbacks."""
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("loss {task.fields[loss]:.4f}"), TimeElapsedColumn(), console=console) as bar:
        tasks: dict[int, int] = {}

        def update(block: int, step: int, total: int, loss: float) -> None:
            if block not in tasks:
                tasks[block] = bar.add_task(f"{label} block {block}", total=total, loss=float("nan"))
            bar.update(tasks[block], completed=step, loss=loss)

        yield update


def fail(msg: str) -> None:
    console.print(f"[red]error:[/red] {msg}")
    raise typer.Exit(2)


@app.command()
def train(
    preset: str = typer.Option("mnist", help=f"task preset: {', '.join(PRESETS)}"),
    out: Path = typer.Option(..., help="model directory to write"),
    blocks: int = typer.Option(4, help="number of blocks B"),
    block: Optional[list[int]] = typer.Option(None, help="train only these block indices (repeatable)"),
    end_to_end: bool = typer.Option(False, "--end-to-end", help="train the backprop baseline instead"),
    epochs: Optional[int] = typer.Option(None, help="epochs per block (default: the preset's)"),
    seed: int = 0,
    data: Optional[str] = typer.Option(None, help="train on this file instead of the preset's train split"),
) -> None:
    """Train a DiffusionBlocks model one block at a time (or the end-to-end baseline) into OUT."""
    from dataclasses import replace

    from .workflow import train_diffusion_blocks, train_end_to_end

    try:
        p = get_preset(preset)
        train_ds = load_dataset(data, image_size=p.image_size, stats="own") if data else p.load_split()[0]
    except (KeyError, DataError) as e:
        fail(str(e))
    cfg = replace(p.train, seed=seed, **({"epochs": epochs} if epochs else {}))
    t0 = time.time()
    with block_progress(preset) as progress:
        if end_to_end:
            train_end_to_end(p, train_ds, cfg, out, progress)
        else:
            train_diffusion_blocks(p, p.noise_schedule(blocks), train_ds, cfg, out, blocks=block, progress=progress)
    console.print(f"wrote [bold]{out}[/bold] in {time.time() - t0:.0f} s")


@app.command("eval")
def evaluate(
    model: Path = typer.Argument(..., help="model directory"),
    data: Optional[str] = typer.Option(None, help="labelled data to score (default: the preset's test split)"),
    steps_per_block: int = 1,
) -> None:
    """Test accuracy of a classification model directory."""
    from .wire import ModelManifest
    from .workflow import accuracy

    try:
        m = ModelManifest.load(model)
        p = get_preset(m.task)
        test = load_dataset(data, image_size=p.image_size, stats="own") if data else p.load_split()[1]
    except (FileNotFoundError, KeyError, DataError) as e:
        fail(str(e))
    acc = accuracy(model, test, steps_per_block=steps_per_block)
    console.print_json(json.dumps({"model": str(model), "data": test.name, "examples": len(test), "accuracy": acc}))


@app.command()
def sample(
    model: Path = typer.Argument(..., help="generation model directory"),
    out: Path = typer.Option(Path("samples.png"), help="PNG grid to write"),
    per_class: int = 8,
    cfg_scale: float = 2.0,
    steps_per_block: int = 4,
    seed: int = 0,
) -> None:
    """Generate a PNG grid (one row per class) from a class-conditional model."""
    from .imaging import save_grid
    from .sampler import generate
    from .wire import load_blocks

    m, blocks = load_blocks(model)
    if m.kind != "generator":
        fail(f"{model} is a {m.kind} model, not a generator")
    labels = torch.arange(blocks[0].arch.num_classes).repeat_interleave(per_class)
    x = generate(blocks, m.noise_schedule, labels, m.noise_schedule.block_grid(steps_per_block), cfg_scale=cfg_scale,
                 generator=torch.Generator().manual_seed(seed))
    save_grid(x, out, nrow=per_class)
    console.print(f"wrote {out}")


@app.command()
def demo(
    out: Path = typer.Option(Path("demo-out"), help="where models and results go"),
    quick: bool = typer.Option(False, help="a smaller, faster run (used by the tests)"),
) -> None:
    """The local demo: train DiffusionBlocks (B=4) and the end-to-end baseline on digits and compare."""
    from dataclasses import replace

    from .workflow import accuracy, train_diffusion_blocks, train_end_to_end

    p = get_preset("digits")
    train_ds, test_ds = p.load_split()
    cfg = replace(p.train, epochs=3 if quick else p.train.epochs)
    results = {}
    with block_progress("digits") as progress:
        train_diffusion_blocks(p, p.noise_schedule(4), train_ds, cfg, out / "diffusionblocks", progress=progress)
        train_end_to_end(p, train_ds, cfg, out / "end-to-end", progress=progress)
    for name in ("diffusionblocks", "end-to-end"):
        results[name] = accuracy(out / name, test_ds)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    console.print_json(json.dumps(results))
    console.print(f"models and results in [bold]{out}[/bold]")


if __name__ == "__main__":
    app()
