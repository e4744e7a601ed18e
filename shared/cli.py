"""`dblocks`: local DiffusionBlocks training, evaluation, prediction and sampling (no federation involved).

With `--data` the data set decides the model's input shape, classes and class names; a preset (if given) only
the architecture and schedule. The class list and the feature preprocessing are saved with the model
(`schema.DataSchema`) and applied unchanged by `eval` and `predict`. Errors end in one line (exit 2 for a
user's mistake; `--debug` shows the traceback: `clierrors.py`)."""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from .clierrors import SafeTyper, bounded
from .errors import DataError
from .sniff import preflight
from .text_presets import TEXT_PRESETS, is_text_checkpoint

# what each preset of shared/presets.py is (input, total layers, kind) and the recipes' depth (shared/recipes.py),
# known here (tests check they agree) so that a mismatch is refused before the data is read and torch imported
PRESET_SHAPES = {
    "digits": ("image", 8, "classifier"),
    "mnist": ("image", 8, "classifier"),
    "breast_cancer": ("tabular", 4, "classifier"),
    "mnist-fed": ("image", 12, "classifier"),
    "mnist-gen": ("image", 8, "generator"),
}
PRESET_NAMES = tuple(PRESET_SHAPES)
RECIPE_LAYERS = {"tabular": 4, "image": 8}
TABLE_SUFFIXES = (".csv", ".csv.gz", ".parquet", ".pq")


def _early_checks(data: str, preset: str | None, blocks: int | None, end_to_end: bool) -> None:
    """Preset vs data kind and --blocks vs depth, decided from the file's type before it is read."""
    path = Path(data)
    suffix = ("".join(path.suffixes[-2:]) if path.suffix == ".gz" else path.suffix).lower()
    kind = "tabular" if suffix in TABLE_SUFFIXES else "image" if path.is_dir() else None  # NPZ: either
    if preset is not None:
        want, _, what = PRESET_SHAPES[preset]
        if what != "classifier":
            fail(
                f"preset {preset!r} is a {what}; `dblocks train --data` trains classifiers: omit --preset to get a "
                f"recipe chosen from the data"
            )
        if kind is not None and kind != want:
            fail(
                f"preset {preset!r} is for {want} data, but {path.name} is {kind}; omit --preset to get a recipe "
                f"chosen from the data"
            )
    layers = PRESET_SHAPES[preset][1] if preset is not None else RECIPE_LAYERS.get(kind or "")
    if layers and blocks and not end_to_end and layers % blocks:
        divisors = [d for d in range(1, layers + 1) if layers % d == 0]
        fail(
            f"the model has {layers} layers, which {blocks} blocks cannot share equally; --blocks must be one of "
            f"{', '.join(map(str, divisors))}"
        )


app = SafeTyper(
    help="Local DiffusionBlocks training, evaluation, prediction and sampling. Add --debug anywhere "
    "to see a traceback.",
    no_args_is_help=True,
)
console = Console(soft_wrap=True)


@contextmanager
def block_progress(label: str):
    """A rich progress bar fed by (block, step, total, loss) callbacks."""
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TimeElapsedColumn(),
        console=console,
    ) as bar:
        tasks: dict[int, TaskID] = {}

        def update(block: int, step: int, total: int, loss: float) -> None:
            if block not in tasks:
                tasks[block] = bar.add_task(f"{label} block {block}", total=total, loss=float("nan"))
            bar.update(tasks[block], completed=step, loss=loss)

        yield update


def fail(msg: str) -> None:
    console.print(f"[red]error:[/red] {escape(bounded(msg))}", highlight=False)
    raise typer.Exit(2)


def note(msg: str) -> None:
    console.print(f"[yellow]note:[/yellow] {escape(bounded(msg))}", highlight=False)


def _class_list(text: str | None) -> list[str] | None:
    if text is None:
        return None
    names = [c.strip() for c in text.split(",") if c.strip()]
    if len(names) < 2 or len(set(names)) != len(names):
        raise DataError(f"--classes needs at least two distinct comma-separated names, got {text[:80]!r}")
    return names


def _check_trainable(ds, label_column: str, test_fraction: float) -> None:
    """Refuse, with what to do, data a classifier cannot be trained (and tested) on."""
    import numpy as np

    counts = np.bincount(ds.y.numpy(), minlength=ds.num_classes)
    present = [ds.class_names[i] for i in np.flatnonzero(counts)]
    if len(present) < 2:
        raise DataError(
            f"{ds.name}: every row has the same label ({present[0] if present else 'none'!r} in "
            f"{label_column!r}); a classifier needs at least two classes. Is it the right label column?"
        )
    if not 0 <= test_fraction < 1:
        raise DataError(f"--test-fraction must lie in [0, 1), got {test_fraction}")
    if test_fraction > 0:
        few = [ds.class_names[i] for i in np.flatnonzero((counts > 0) & (counts < 2))]
        if few:
            raise DataError(
                f"{ds.name}: class(es) {', '.join(few[:5])} have a single example; a stratified "
                f"held-out split needs two per class: add examples or pass --test-fraction 0"
            )
        n_test = int(np.ceil(test_fraction * len(ds)))
        if n_test < len(present) or len(ds) - n_test < len(present):
            raise DataError(
                f"{ds.name}: {len(ds)} rows are too few for a stratified {test_fraction:g} held-out split "
                f"of {len(present)} classes; pass a larger --test-fraction or --test-fraction 0"
            )


def _print_report(report: dict, title: str) -> None:
    from rich.table import Table

    t = Table(title=f"{title}: accuracy {report['accuracy']:.3f} on {report['examples']} examples")
    t.add_column("class")
    t.add_column("examples", justify="right")
    t.add_column("accuracy", justify="right")
    for name, r in report["per_class"].items():
        t.add_row(name, str(r["examples"]), "-" if r["accuracy"] is None else f"{r['accuracy']:.3f}")
    console.print(t)


@app.command()
def train(
    preset: str | None = typer.Option(
        None,
        help=f"architecture and schedule: {', '.join(PRESET_NAMES)} (default: "
        f"mnist without --data; with --data a recipe chosen from it); language models: {', '.join(TEXT_PRESETS)}",
    ),
    out: Path = typer.Option(..., help="model directory to write (a text preset: one model file, e.g. m.pt)"),
    blocks: int | None = typer.Option(None, help="number of blocks B (default: the preset's 4 or the recipe's)"),
    block: list[int] | None = typer.Option(None, help="train only these block indices (repeatable)"),
    end_to_end: bool = typer.Option(False, "--end-to-end", help="train the backprop baseline instead"),
    epochs: int | None = typer.Option(None, help="epochs per block (default: the preset's or the recipe's)"),
    seed: int = typer.Option(0, help="seed of the initialisation, the batches and the held-out split"),
    data: str | None = typer.Option(
        None, help="train on this CSV/Parquet/NPZ file or image folder instead of the preset's train split"
    ),
    label_column: str = typer.Option("label", help="label column of a CSV/Parquet file"),
    test_fraction: float = typer.Option(
        0.2,
        help="with --data: stratified held-out fraction (seeded by --seed), "
        "scored after training; 0: no held-out split",
    ),
    classes: str | None = typer.Option(
        None,
        help="with --data: the class list, comma-separated, fixing names and "
        "order (default: the file's labels, sorted)",
    ),
    image_size: int | None = typer.Option(None, help="with --data: resize images to N x N"),
    steps: int | None = typer.Option(
        None, help="text presets: updates per parameter (per block; default: the preset's)"
    ),
) -> None:
    """Train a DiffusionBlocks model one block at a time (or the end-to-end baseline) into OUT.

    With a text preset (--preset text-mdm|text-ar|text-recurrent), --data is a UTF-8 text file or a folder of
    them (default: the Python standard library's source) and OUT is one model file."""
    from dataclasses import replace

    if blocks is not None and blocks < 1 or epochs is not None and epochs < 1 or steps is not None and steps < 1:
        fail("--blocks, --epochs and --steps must be at least 1")
    if preset in TEXT_PRESETS:
        if block or epochs:
            fail("text presets train every block in turn for --steps updates; --block and --epochs are for images")
        _train_text(preset, out, data, end_to_end, steps, blocks, seed)
        return
    if steps is not None:
        fail("--steps is for the text presets; image and tabular models take --epochs")
    if preset is not None and preset not in PRESET_NAMES:
        fail(
            f"unknown preset {preset!r}; choose one of {', '.join(PRESET_NAMES + tuple(TEXT_PRESETS))}, or omit "
            f"--preset with --data"
        )
    ds = None
    if data is not None:
        preflight(data)  # refuses what is not a sane table before torch is imported
        _early_checks(data, preset, blocks, end_to_end)
        from .data import load_dataset

        ds = load_dataset(
            data, label_column=label_column, image_size=image_size, classes=_class_list(classes), min_classes=2
        )
        for n in ds.notes:
            note(n)
        _check_trainable(ds, label_column, test_fraction)
    from .data import FeatureStats, stratified_split
    from .presets import get_preset
    from .recipes import fit_preset, recipe_for
    from .schema import DataSchema
    from .workflow import evaluation_report, predict, train_diffusion_blocks, train_end_to_end

    try:
        base = get_preset(preset) if preset else None
    except KeyError as e:
        fail(str(e.args[0]))
    test_ds = None
    if ds is None:
        p = base or get_preset("mnist")
        train_ds, test_split = p.load_split()
        stats = p.feature_stats()
        schema = DataSchema.of(test_split, stats=stats, source={"preset": p.name})
        default_blocks, label = 4, p.name
    else:
        if test_fraction > 0:
            try:
                train_ds, test_ds = stratified_split(ds, test_fraction, seed=seed)
            except ValueError as e:
                raise DataError(f"{ds.name}: cannot split {len(ds)} rows stratified ({e})") from None
        else:
            train_ds = ds
        stats = None
        if train_ds.kind == "tabular":
            stats = FeatureStats.of(
                train_ds.x,
                f"training split of {ds.name} ({len(train_ds)} rows; local training, outside any DP guarantee)",
            )
            train_ds = train_ds.standardize(stats)
            test_ds = test_ds.standardize(stats) if test_ds is not None else None
        plan = fit_preset(base, train_ds) if base else recipe_for(train_ds)
        p, default_blocks, label = plan.preset, plan.blocks, train_ds.name
        console.print(
            f"{plan.origin}; {len(train_ds)} training rows, {len(test_ds) if test_ds is not None else 0} held out"
        )
        source = {"data": str(Path(str(data)).resolve()), "test_fraction": test_fraction, "split_seed": seed}
        schema = DataSchema.of(train_ds, label_column=label_column, stats=stats, image_size=image_size, source=source)
    nb = blocks or default_blocks
    if not end_to_end and p.total_layers % nb:
        divisors = [d for d in range(1, p.total_layers + 1) if p.total_layers % d == 0]
        fail(
            f"the model has {p.total_layers} layers, which {nb} blocks cannot share equally; --blocks must be one "
            f"of {', '.join(map(str, divisors))}"
        )
    cfg = replace(p.train, seed=seed, epochs=epochs or p.train.epochs)
    t0 = time.time()
    with block_progress(label) as progress:
        if end_to_end:
            train_end_to_end(p, train_ds, cfg, out, progress, schema=schema)
        else:
            train_diffusion_blocks(
                p, p.noise_schedule(nb), train_ds, cfg, out, blocks=block, progress=progress, schema=schema
            )
    console.print(f"wrote [bold]{out}[/bold] in {time.time() - t0:.0f} s")
    if test_ds is not None and (end_to_end or block is None):
        report = evaluation_report(test_ds.y, predict(out, test_ds.x), schema.class_names)
        (Path(out) / "report.json").write_text(json.dumps({"data": "held-out split", **report}, indent=2))
        _print_report(report, f"held-out {test_fraction:g} of {Path(str(data)).name}")
        console.print(f"report: {Path(out) / 'report.json'}")


def _train_text(
    preset: str, out: Path, data: str | None, end_to_end: bool, steps: int | None, blocks: int | None, seed: int
) -> None:
    """Train a text preset's model (blocks one after another, or the end-to-end baseline) into the file OUT."""
    if out.is_dir():
        fail(f"{out} is a directory; a text model is one file: give e.g. --out {out / 'model.pt'}")
    from dataclasses import replace

    from .text import TokenStream
    from .text_presets import TextModel, data_record, family_module, load_corpus, save_checkpoint

    corpus = load_corpus(data)  # refuses unusable text before torch is imported
    family = TEXT_PRESETS[preset]
    module = family_module(family)
    cfg = module.Config()
    try:
        cfg = replace(cfg, steps=steps or cfg.steps, num_blocks=blocks or cfg.num_blocks)
    except ValueError as e:
        fail(str(e))
    train_stream, val_stream = TokenStream(corpus.train), TokenStream(corpus.val)
    console.print(
        f"{preset}: {corpus.name} ({len(corpus.train)}/{len(corpus.val)}/{len(corpus.test)} documents train/val/"
        f"test, {len(train_stream)} training bytes); "
        + ("end-to-end baseline" if end_to_end else f"{cfg.num_blocks} blocks")
        + f" of {cfg.total_layers} layers in total, {cfg.steps} updates per parameter"
    )
    model = module.build(cfg, end_to_end=end_to_end, seed=seed)
    total = cfg.steps * (1 if end_to_end else cfg.num_blocks)
    t0 = time.time()
    with Progress(
        TextColumn("[bold]training"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TimeElapsedColumn(),
        console=console,
    ) as bar:
        task = bar.add_task("train", total=total, loss=float("nan"))
        module.train(
            model, cfg, train_stream, seed=seed, on_step=lambda i, loss: bar.update(task, completed=i, loss=loss)
        )
    save_checkpoint(out, TextModel(family, module, cfg, end_to_end, model, data_record(corpus, data)))
    metrics = module.evaluate(model, cfg, val_stream, seed=0, max_windows=32)
    console.print(f"wrote [bold]{escape(str(out))}[/bold] in {time.time() - t0:.0f} s; validation {_metrics(metrics)}")


def _metrics(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())


def _text_model(model: Path):
    from .text_presets import load_checkpoint

    return load_checkpoint(model)


def _eval_text(model: Path, data: str | None, split: str | None, max_windows: int, out: Path | None) -> None:
    """Score a text model: --data (all of it unless --split), else the test split of the corpus it was trained on."""
    from .text import TokenStream
    from .text_presets import load_corpus

    tm = _text_model(model)
    source = data if data is not None else tm.data.get("path")
    corpus = load_corpus(source)
    if data is None and tm.data.get("digest") not in (None, corpus.digest):
        note(f"{corpus.name} changed since the model was trained (digest {corpus.digest} vs {tm.data['digest']})")
    which = split or ("all" if data is not None else "test")
    if which not in ("train", "val", "test", "all"):
        fail(f"--split must be train, val, test or all, not {which!r}")
    docs = corpus.train + corpus.val + corpus.test if which == "all" else corpus.split(which)
    metrics = tm.module.evaluate(tm.model, tm.config, TokenStream(docs), seed=0, max_windows=max_windows)
    result = {
        "model": str(model),
        "family": tm.family,
        "end_to_end": tm.end_to_end,
        "data": corpus.name,
        "split": which,
        **metrics,
    }
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2))
    console.print_json(json.dumps(result))


def _sample_text(model: Path, prompt: str, tokens: int, num: int, seed: int) -> None:
    """Print `num` continuations of `prompt` (the prompt, then the generated bytes)."""
    from .text import decode, encode

    if tokens < 1 or num < 1:
        fail("--tokens and --num must be at least 1")
    tm = _text_model(model)
    ids = encode(prompt)
    for i in range(num):
        try:
            new = tm.module.sample(tm.model, tm.config, ids, new_tokens=tokens, seed=seed + i)
        except ValueError as e:
            fail(str(e))
        if num > 1:
            console.print(f"--- sample {i + 1} (seed {seed + i})", style="bold", highlight=False)
        console.print(prompt + decode(new), markup=False, highlight=False)


def _model_and_schema(model: Path):
    """The manifest and data schema of a model directory, checking that every block is there."""
    if not (model / "model.json").is_file():  # before torch is imported
        fail(f"{model / 'model.json'}: not a dblocks model directory (no model.json)")
    from .wire import ModelManifest
    from .workflow import model_schema

    m = ModelManifest.load(model)
    if m.kind == "classifier" or m.kind == "generator":
        missing = [
            i
            for i in range(m.noise_schedule.num_blocks)
            if not (model / f"block-{i}.safetensors").exists() or not (model / f"block-{i}.json").exists()
        ]
        if missing:
            fail(
                f"{model}: block(s) {', '.join(map(str, missing))} were not trained (training stopped early, or "
                f"--block trained only some): train them with `dblocks train --block I` into the same directory"
            )
    elif not (model / "model.safetensors").exists():
        fail(f"{model}: the end-to-end model's weights are missing (training stopped early?)")
    return m, model_schema(model)


def _labelled_data(model: Path, m, schema, data: str | None, label_column: str | None):
    """What `eval` scores: --data read through the model's schema, else the held-out split it was trained with."""
    from .data import load_dataset, stratified_split
    from .presets import get_preset

    if data is not None:
        if schema is None:
            p = get_preset(m.task)
            return load_dataset(
                data, label_column=label_column or "label", image_size=p.image_size, stats=p.feature_stats()
            )
        return schema.load(data, label_column=label_column)
    if schema is not None and "data" in schema.source:
        frac, seed = float(schema.source.get("test_fraction", 0)), int(schema.source.get("split_seed", 0))
        if frac <= 0:
            fail(f"{model} was trained on all of {schema.source['data']} (--test-fraction 0): pass --data FILE")
        full = schema.load(schema.source["data"], label_column=label_column)
        return stratified_split(full, frac, seed=seed)[1]
    try:
        return get_preset(m.task).load_split()[1]
    except KeyError:
        fail(f"{model}: no held-out data recorded; pass --data FILE")


@app.command("eval")
def evaluate(
    model: Path | None = typer.Argument(None, help="model directory (a text model: its file)", show_default=False),
    data: str | None = typer.Option(
        None,
        help="labelled data to score (default: the held-out split of the training file, or the preset's test split)",
    ),
    label_column: str | None = typer.Option(None, help="label column (default: the one the model was trained with)"),
    steps_per_block: int = 1,
    out: Path | None = typer.Option(None, help="also write the report (JSON) here"),
    model_opt: Path | None = typer.Option(None, "--model", help="the model, as an option instead of an argument"),
    split: str | None = typer.Option(
        None, help="text models: train, val, test or all (default: test of the training corpus; all of --data)"
    ),
    max_windows: int = typer.Option(256, help="text models: held-out windows to score"),
) -> None:
    """Accuracy, per-class accuracy and confusion matrix of a classification model, with its class names; a text
    model's bits per byte (BPC) on held-out text."""
    model = _model_arg(model, model_opt)
    if is_text_checkpoint(model):
        _eval_text(model, data, split, max_windows, out)
        return
    if data is not None:
        preflight(data)
    m, schema = _model_and_schema(model)
    from .workflow import evaluation_report, predict

    if m.kind == "generator":
        fail(f"{model} is a generator; use `dblocks sample`")
    test = _labelled_data(model, m, schema, data, label_column)
    if not test.labelled:
        fail(f"{test.name} has no labels to score; use `dblocks predict {model} --data {data}`")
    for n in test.notes:
        note(n)
    names = schema.class_names if schema is not None else test.class_names or [str(i) for i in range(test.num_classes)]
    report = evaluation_report(test.y, predict(model, test.x, steps_per_block=steps_per_block), names)
    result = {"model": str(model), "data": test.name, **report}
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2))
    console.print_json(json.dumps({k: v for k, v in result.items() if k != "confusion"}))


@app.command("predict")
def predict_cmd(
    model: Path = typer.Argument(..., help="model directory"),
    data: str = typer.Option(
        ...,
        help="rows to classify: CSV/Parquet (a label column is optional and ignored), NPZ (x, optional y) or images",
    ),
    out: Path = typer.Option(
        Path("predictions.csv"),
        help="CSV to write: row, predicted class name, its probability and one probability column per class",
    ),
    label_column: str | None = typer.Option(None, help="label column to ignore (default: the model's)"),
    steps_per_block: int = 1,
) -> None:
    """Classify new rows with a model; the output names the classes as the training data did."""
    preflight(data)
    m, schema = _model_and_schema(model)
    import pandas as pd

    from .workflow import predict_proba

    if m.kind == "generator":
        fail(f"{model} is a generator; use `dblocks sample`")
    if schema is None:
        fail(f"{model} was saved without its class list (an older dblocks); retrain it to predict with class names")
    ds = schema.load(data, label_column=label_column, labels="optional")
    for n in ds.notes:
        if not n.startswith("no label column") and not n.startswith("no array 'y'"):
            note(n)
    proba = predict_proba(model, ds.x, steps_per_block=steps_per_block)
    pred = proba.argmax(-1)
    names = schema.class_names
    table = pd.DataFrame(
        {
            "row": range(1, len(pred) + 1),
            "prediction": [names[i] for i in pred.tolist()],
            "probability": proba.max(-1).values.numpy().round(4),
        }
    )
    for k, name in enumerate(names):
        table[f"p_{name}"] = proba[:, k].numpy().round(4)
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False)
    msg = f"wrote {len(table)} predictions to [bold]{out}[/bold]"
    if ds.labelled:
        msg += f" (accuracy against the file's labels: {float((pred == ds.y).float().mean()):.3f})"
    console.print(msg)


def _model_arg(model: Path | None, model_opt: Path | None) -> Path:
    if model is not None and model_opt is not None and model != model_opt:
        fail("give the model once: as an argument or with --model")
    if model is None and model_opt is None:
        fail("which model? give it as an argument or with --model")
    return model or model_opt  # type: ignore[return-value]


@app.command()
def sample(
    model: Path | None = typer.Argument(
        None, help="generation model directory (a text model: its file)", show_default=False
    ),
    out: Path = typer.Option(Path("samples.png"), help="PNG grid to write (image generators)"),
    per_class: int = 8,
    cfg_scale: float = 2.0,
    steps_per_block: int = 4,
    seed: int = 0,
    model_opt: Path | None = typer.Option(None, "--model", help="the model, as an option instead of an argument"),
    prompt: str = typer.Option("", help="text models: the text to continue"),
    tokens: int = typer.Option(64, help="text models: bytes to generate after the prompt"),
    num: int = typer.Option(1, help="text models: how many continuations (seeds seed, seed+1, ...)"),
) -> None:
    """Generate a PNG grid (one row per class) from a class-conditional model, or print continuations of
    --prompt from a text model."""
    model = _model_arg(model, model_opt)
    if is_text_checkpoint(model):
        _sample_text(model, prompt, tokens, num, seed)
        return
    import torch

    from .imaging import save_grid
    from .sampler import generate
    from .wire import load_blocks

    m, blocks = load_blocks(model)
    if m.kind != "generator":
        fail(f"{model} is a {m.kind} model, not a generator")
    labels = torch.arange(blocks[0].arch.num_classes).repeat_interleave(per_class)
    x = generate(
        blocks,
        m.noise_schedule,
        labels,
        m.noise_schedule.block_grid(steps_per_block),
        cfg_scale=cfg_scale,
        generator=torch.Generator().manual_seed(seed),
    )
    save_grid(x, out, nrow=per_class)
    console.print(f"wrote {out}")


@app.command()
def demo(
    out: Path = typer.Option(Path("demo-out"), help="where models and results go"),
    quick: bool = typer.Option(False, help="a smaller, faster run (used by the tests)"),
) -> None:
    """The local demo: train DiffusionBlocks (B=4) and the end-to-end baseline on digits and compare."""
    from dataclasses import replace

    from .presets import get_preset
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
