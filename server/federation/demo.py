"""`dbserver demo`: the main job — a complete local federation on the embedded defaults.

1. MNIST 5k, fixed 4000/1000 split: 1000 training images are public, the other 3000 are private and are
   spread over the companies (Dirichlet 0.5 non-IID by label).
2. The operator pretrains the B blocks on the public images (DiffusionBlocks, one block at a time).
3. Registry + dashboard, a SuperLink with TLS and node authentication, and one `dbclient join` per company
   (each with its own node key, approved by the operator) start as real processes.
4. A federated run adapts the blocks on the private data: per round every block gets a cohort, companies
   train with DP-SGD, the cohort's clipped deltas are securely aggregated (SecAgg+), the registry records
   every block version with its privacy numbers.
5. The assembled model is evaluated on the test split; the companies' ledgers show what they spent.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

console = Console(soft_wrap=True)


def demo(
    out: Path = typer.Option(Path("demo-out"), help="where everything goes (recreated)"),
    companies: int = typer.Option(6, help="number of companies (SuperNodes)"),
    blocks: int = typer.Option(2, help="number of blocks B"),
    rounds: int = typer.Option(3, help="federated rounds"),
    pretrain_epochs: int = typer.Option(20, help="epochs per block on the public images"),
    serve: bool = typer.Option(sys.stdout.isatty(), help="keep the dashboard up until Ctrl-C when done"),
) -> None:
    """Run a complete local federation (registry, SuperLink, companies) and show the results."""
    import shutil

    from dblocks.shared.presets import get_preset
    from dblocks.shared.workflow import accuracy, train_diffusion_blocks

    from .localfed import LocalFederation

    t0 = time.time()
    if out.exists():
        shutil.rmtree(out)
    fed = LocalFederation(out)
    preset = get_preset("mnist-fed")
    public, paths, test = fed.company_data(companies, public=1000, alpha=0.5)
    console.rule("1. data")
    console.print(f"public: {len(public)} images; private: {', '.join(str(len(__import__('numpy').load(p)['y'])) for p in paths)} "
                  f"images at {companies} companies (Dirichlet 0.5); test: {len(test)}")
    console.rule(f"2. pretraining {blocks} blocks on the public images")
    init = out / "pretrained"
    train_diffusion_blocks(preset, preset.noise_schedule(blocks), public, replace(preset.train, epochs=pretrain_epochs), init)
    acc0 = accuracy(init, test)
    console.print(f"pretrained on public data only: test accuracy {acc0:.4f}")
    with fed:
        console.rule("3. registry, SuperLink (TLS + node keys), companies")
        url = fed.start_registry()
        fed.start_superlink()
        for i, p in enumerate(paths):
            fed.add_company(f"company{i}", p, budget=8.0)
        console.print(f"registry + dashboard at {url}; SuperLink on 127.0.0.1:{fed.superlink_port}; {companies} companies joined")
        console.rule(f"4. federated run: {rounds} rounds, DP-SGD + secure aggregation per block cohort")
        proc = fed.run(task="mnist-fed", num_blocks=blocks, num_rounds=rounds, cohort_size=3, min_cohort=3,
                       record_noise=1.0, record_clip=1.0, record_sample_rate=0.1, record_steps=15, lr=3e-4,
                       update_clip=0.5, init_model_dir=init)
        run_id = fed.runs()[-1]
        status = fed.status(run_id)
        if status.get("status") != "finished":
            console.print(f"[red]the run did not finish: {status}[/red]; see {fed.run_dir(run_id) / 'serverapp.log'}")
            raise typer.Exit(1)
        acc1 = accuracy(fed.run_dir(run_id) / "checkpoints", test)
        console.rule("5. results")
        t = Table("round", "blocks trained", "seconds", "test accuracy")
        for r in status["rounds"]:
            t.add_row(str(r["round"]), str(r["blocks"]), f"{r['seconds']:.0f}", f"{r.get('test_accuracy', float('nan')):.4f}")
        console.print(t)
        spent = Table("company", "record-level epsilon spent (delta 1e-5)", "updates")
        for i in range(companies):
            ledgers = list((fed.company_home(f"company{i}") / "ledgers").glob("*.json"))
            entries = json.loads(ledgers[0].read_text())["entries"] if ledgers else []
            spent.add_row(f"company{i}", f"{entries[-1]['epsilon_after']:.2f}" if entries else "0", str(len(entries)))
        console.print(spent)
        console.print(f"test accuracy: pretrained on public data {acc0:.4f} -> after federated adaptation {acc1:.4f}")
        console.print(f"model: {fed.run_dir(run_id) / 'checkpoints'}   logs: {out}   total {time.time() - t0:.0f} s")
        console.print(f"dashboard: {url}  (admin token: {fed.admin_token})")
        (out / "results.json").write_text(json.dumps({"run_id": run_id, "accuracy_pretrained": acc0,
                                                      "accuracy_federated": acc1, "rounds": status["rounds"],
                                                      "seconds": time.time() - t0}, indent=2))
        if serve:
            console.print("the dashboard stays up until you press Ctrl-C")
            try:
                fed.procs["registry"].wait()
            except KeyboardInterrupt:
                pass
