"""`dbserver demo`: the main job — a complete local federation on the embedded defaults.

1. MNIST 5k, fixed 4000/1000 split: 3000 training images are private and are spread over the companies
   (Dirichlet 0.5 non-IID by label). The operator's own data is another source (the *shift* scenario of
   bench/dp_adapt.py): sklearn's 1797 8x8 digit scans brought to MNIST's 28x28 format (`digits_as_mnist`).
2. The operator pretrains the B blocks on its public digits (DiffusionBlocks, one block at a time).
3. Registry + dashboard, a SuperLink with TLS and node authentication, and one `dbclient join` per company
   (each with its own node key, approved by the operator) start as real processes.
4. A federated run adapts the blocks on the private data: per round every block gets a cohort, companies
   train with DP-SGD, the cohort's clipped deltas are securely aggregated (SecAgg+), the registry records
   every block version with its privacy numbers.
5. The assembled model is evaluated on the test split; the companies' ledgers show what they spent.
6. Reference, NOT private: the same rounds without DP (no noise, no per-example clip, no secure aggregation),
   run in one process by the same client code (`train_task`) while the federation runs. It shows what the
   privacy costs; it is not what the product does.
The accuracy per round of all three goes to <out>/accuracy.png (and results.json).

Settings (why: docs/benchmarks.md, "Private data that pays"): companies train only their block's input layers
and biases (`--trainable input+bias`, ~5 % of a block's values): DP-SGD's noise grows with the number of trained
values, and an input shift is mostly undone in the patch tokenizer; few rounds with large Poisson batches (q = 0.5),
the noise multiplier chosen so that every company stays at or below `epsilon` (record level, delta 1e-5, PRV,
all rounds composed).
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
    rounds: int = typer.Option(2, help="federated rounds"),
    pretrain_epochs: int = typer.Option(10, help="epochs per block on the public images"),
    epsilon: float = typer.Option(7.5, help="record-level epsilon each company may reach (delta 1e-5, all rounds)"),
    steps: int = typer.Option(15, help="DP-SGD steps per company per round"),
    sample_rate: float = typer.Option(0.5, help="DP-SGD Poisson sampling rate q"),
    lr: float = typer.Option(1e-2, help="company learning rate (AdamW; cosine over rounds)"),
    trainable: str = typer.Option("input+bias", help="block parameters the companies train"),
    reference: bool = typer.Option(True, help="also run the NOT private reference without DP, in process"),
    serve: bool = typer.Option(sys.stdout.isatty(), help="keep the dashboard up until Ctrl-C when done"),
) -> None:
    """Run a complete local federation (registry, SuperLink, companies) and show the results."""
    import shutil

    from dblocks.privacy.accounting import noise_for_epsilon
    from dblocks.shared.presets import digits_as_mnist, get_preset
    from dblocks.shared.workflow import accuracy, train_diffusion_blocks

    from .localfed import LocalFederation

    t0 = time.time()
    if out.exists():
        shutil.rmtree(out)
    fed = LocalFederation(out)
    preset = get_preset("mnist-fed")
    _, paths, test = fed.company_data(companies, public=1000, alpha=0.5)
    public = digits_as_mnist()
    console.rule("1. data")
    sizes = ", ".join(str(len(__import__("numpy").load(p)["y"])) for p in paths)
    console.print(
        f"operator's public data: {len(public)} sklearn digit scans (8x8, brought to 28x28); private MNIST: {sizes} "
        f"images at {companies} companies (Dirichlet 0.5); test: {len(test)}"
    )
    console.rule(f"2. pretraining {blocks} blocks on the public images")
    init = out / "pretrained"
    train_diffusion_blocks(
        preset, preset.noise_schedule(blocks), public, replace(preset.train, epochs=pretrain_epochs), init
    )
    acc0 = accuracy(init, test)
    console.print(f"pretrained on public data only: test accuracy {acc0:.4f}")
    # every company trains one block in every round: its history is rounds * steps DP-SGD steps at rate q
    z = noise_for_epsilon(epsilon, 1e-5, sample_rate, rounds * steps, "prv")
    ref = _start_reference(init, paths, test, blocks, rounds, steps, sample_rate, lr) if reference else None
    with fed:
        console.rule("3. registry, SuperLink (TLS + node keys), companies")
        url = fed.start_registry()
        fed.start_superlink()
        # the run is submitted first and waits for the companies (min_nodes): the ServerApp starts while they join
        run = fed.run(
            wait=False,
            min_nodes=companies,
            task="mnist-fed",
            num_blocks=blocks,
            num_rounds=rounds,
            cohort_size=3,
            min_cohort=3,
            record_noise=z,
            record_clip=1.0,
            record_sample_rate=sample_rate,
            record_steps=steps,
            lr=lr,
            update_clip=2.0,
            trainable=trainable,
            init_model_dir=init,
        )
        fed.add_companies({f"company{i}": p for i, p in enumerate(paths)}, budget=8.0)
        console.print(
            f"registry + dashboard at {url}; SuperLink on 127.0.0.1:{fed.superlink_port}; {companies} companies joined"
        )
        console.rule(f"4. federated run: {rounds} rounds, DP-SGD + secure aggregation per block cohort")
        console.print(
            f"record-level DP-SGD at each company: noise multiplier {z:.2f}, clip 1, q {sample_rate}, {steps} "
            f"steps per round, trainable {trainable}; target epsilon {epsilon} (delta 1e-5, PRV, all rounds)"
        )
        run.wait()
        run_id = fed.runs()[-1]
        status = fed.status(run_id)
        if status.get("status") != "finished":
            console.print(f"[red]the run did not finish: {status}[/red]; see {fed.run_dir(run_id) / 'serverapp.log'}")
            raise typer.Exit(1)
        acc1 = accuracy(fed.run_dir(run_id) / "checkpoints", test)
        ref_curve = ref.result() if ref is not None else []
        console.rule("5. results")
        t = Table("round", "blocks trained", "seconds", "test accuracy, DP", "reference without DP (NOT private)")
        ref_at = dict(ref_curve)
        for r in status["rounds"]:
            t.add_row(
                str(r["round"]),
                str(r["blocks"]),
                f"{r['seconds']:.0f}",
                f"{r.get('test_accuracy', float('nan')):.4f}",
                f"{ref_at[r['round']]:.4f}" if r["round"] in ref_at else "-",
            )
        console.print(t)
        spent = Table("company", "record-level epsilon spent (delta 1e-5, PRV)", "updates")
        eps = {}
        for i in range(companies):
            ledgers = list((fed.company_home(f"company{i}") / "ledgers").glob("*.json"))
            entries = json.loads(ledgers[0].read_text())["entries"] if ledgers else []
            eps[f"company{i}"] = entries[-1]["epsilon_after"] if entries else 0.0
            spent.add_row(f"company{i}", f"{eps[f'company{i}']:.2f}", str(len(entries)))
        console.print(spent)
        gain = 100 * (acc1 - acc0)
        console.print(
            f"test accuracy: pretrained on the operator's public data {acc0:.4f} -> federated with DP {acc1:.4f} "
            f"([bold]{gain:+.1f} points[/bold], every company at epsilon <= {max(eps.values()):.2f})"
        )
        if ref_curve:
            console.print(
                f"reference, NOT private (no DP, no secure aggregation, same rounds, in process): "
                f"{ref_curve[-1][1]:.4f}"
            )
        curve = [(0, acc0)] + [(r["round"], r.get("test_accuracy", float("nan"))) for r in status["rounds"]]
        _plot(out / "accuracy.png", curve, [(0, acc0)] + ref_curve, acc0)
        seconds = time.time() - t0
        console.print(
            f"model: {fed.run_dir(run_id) / 'checkpoints'}   plot: {out / 'accuracy.png'}   logs: {out}   "
            f"total {seconds:.0f} s"
        )
        console.print(f"dashboard: {url}  (admin token: {fed.admin_token})")
        (out / "results.json").write_text(
            json.dumps(
                {
                    "run_id": run_id,
                    "scenario": "shift: public = sklearn digits as 28x28, companies = MNIST",
                    "accuracy_pretrained": acc0,
                    "accuracy_federated": acc1,
                    "gain_points": gain,
                    "epsilon_per_company": eps,
                    "noise_multiplier": z,
                    "trainable": trainable,
                    "reference_no_dp_not_private": ref_curve,
                    "rounds": status["rounds"],
                    "seconds": seconds,
                },
                indent=2,
            )
        )
        if serve:
            console.print("the dashboard stays up until you press Ctrl-C")
            try:
                fed.procs["registry"].wait()
            except KeyboardInterrupt:
                pass


def _plot(path: Path, dp: list, ref: list, acc0: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(*zip(*dp), "o-", label="federated with record-level DP")
    if len(ref) > 1:
        ax.plot(*zip(*ref), "s--", color="gray", label="reference without DP (NOT private)")
    ax.axhline(acc0, color="tab:red", lw=0.8, ls=":", label="pretrained on public data only")
    ax.set_xlabel("round (0: pretrained)")
    ax.set_ylabel("test accuracy")
    ax.set_xticks([r for r, _ in dp])
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


class _Reference:
    """The NOT private reference, computed in a forked process while the federation runs."""

    def __init__(self, proc, queue) -> None:
        self.proc, self.queue = proc, queue

    def result(self) -> list:
        out = self.queue.get(timeout=600)
        self.proc.join()
        return out


def _start_reference(
    init: Path, paths: list[Path], test, blocks: int, rounds: int, steps: int, q: float, lr: float
) -> _Reference:
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(
        target=_reference_worker, args=(queue, init, paths, test, blocks, rounds, steps, q, lr), daemon=True
    )
    proc.start()
    return _Reference(proc, queue)


def _train_without_dp(task, arrays: list, data, g) -> list:
    """What `client.trainer.train_task` does with this task at zero noise and an unreachable clip, without Opacus'
    per-example machinery (a second backward pass per step, the reference's main cost): the same Poisson batches
    of rate q, loss, AdamW and constant lr; the gradient is the sum over the batch / (q N), as Opacus' optimizer
    divides it. Returns the block's delta."""
    import torch

    from dblocks.client.trainer import rebuild_block
    from dblocks.privacy.dpsgd import freeze_except
    from dblocks.shared.training import TrainConfig, make_optimizer, per_sample_loss

    block = rebuild_block(task, arrays)
    before = [p.detach().clone() for p in block.parameters()]
    freeze_except(block, task.trainable)
    cfg = TrainConfig(epochs=1, lr=task.lr, weight_decay=task.weight_decay, warmup=0.0, decay=False)
    opt, _ = make_optimizer(block, cfg, task.steps)
    n, q = len(data), task.sample_rate
    block.train()
    for _ in range(task.steps):
        idx = (torch.rand(n, generator=g) < q).nonzero().flatten()
        if len(idx) == 0:
            continue
        opt.zero_grad(set_to_none=True)
        losses = per_sample_loss(
            block,
            task.block_index,
            data.x[idx],
            data.y[idx],
            generator=g,
            weighting=cfg.classifier_weighting,
            label_dropout=cfg.label_dropout,
        )
        (losses.sum() / (q * n)).backward()
        opt.step()
    return [(p.detach() - b).numpy() for p, b in zip(block.parameters(), before)]


def _reference_worker(queue, init, paths, test, blocks, rounds, steps, q, lr) -> None:
    """Same rounds, cohorts, batches and optimizer as the companies (`_train_without_dp`), but no DP: no noise, no
    per-example clip, every parameter trained, plain mean of the deltas (no secure aggregation). Accuracy on the
    test split per round."""
    import numpy as np
    import torch

    from dblocks.server.federation.config import round_lr
    from dblocks.server.federation.model_state import GlobalModel
    from dblocks.server.federation.scheduler import NodeInfo, assign
    from dblocks.shared.data import load_npz
    from dblocks.shared.fedmsg import BlockTask
    from dblocks.shared.presets import get_preset
    from dblocks.shared.sampler import classify

    torch.set_num_threads(1)
    preset = get_preset("mnist-fed")
    schedule = preset.noise_schedule(blocks)
    model = GlobalModel.initial(preset, schedule, 0, str(init))
    data = [load_npz(p) for p in paths]
    curve = []
    for r in range(1, rounds + 1):
        plan = assign([NodeInfo(i) for i in range(len(data))], blocks, r, 3, 3, seed=0)
        for b, cohort in plan.cohorts.items():
            task = BlockTask(
                run_id="reference",
                round=r,
                block_index=b,
                attempt=0,
                spec_json=model.blocks[b].spec.to_json(),
                noise_multiplier=0.0,
                max_grad_norm=1e6,
                sample_rate=q,
                steps=steps,
                delta=1e-5,
                accountant="rdp",
                lr=round_lr(3e-3, r, rounds),
                weight_decay=0.0,
                update_clip=1e6,
                trainable="all",
            )
            deltas = [
                _train_without_dp(task, model.weights_arrays(b), data[c], torch.Generator().manual_seed(1000 * r + c))
                for c in cohort
            ]
            model.apply_update(b, [np.mean(ds, axis=0) for ds in zip(*deltas)], 1.0, r)
        with torch.no_grad():
            lp = classify([bl.module.eval() for bl in model.blocks], schedule, test.x, schedule.block_grid(1))
        curve.append((r, float((lp.argmax(-1) == test.y).float().mean())))
    queue.put(curve)
