"""Federated masked-diffusion text blocks: companies' private code, DP-SGD per block, dblocks' SecAgg+, one run.

Data: the Python standard library's source (`stdlib_corpus()`, PSF-2.0), split by document 90/5/5. Each document's
`source` is its top-level stdlib package (the ~150 top-level modules form the source "toplevel").
  PUBLIC  = the documents of `PUBLIC_SOURCES` ("toplevel": 4.1 MB of general-purpose modules, os, typing, argparse,
            ... ): what an operator can publish; it pretrains the MDM blocks on their train split.
  PRIVATE = the train documents of every other source (28 packages: encodings, email, xml, asyncio, ...; 5.5 MB),
            dealt out whole to 12 companies (largest source first, to the company holding the fewest bytes), so
            every company holds other packages: non-IID by source.
A record (the DP unit) is one non-overlapping window of `seq_len` bytes cut from one of the company's documents
(a document's tail shorter than a window is dropped). Record-level DP protects any single window; a document
spans many windows, so what is protected for a whole document is the group privacy of its windows (weaker).

Engine: an in-process simulation of the product's round (the same code paths as bench/federated.py, with the
MDM's block loss instead of the image block's): `scheduler.assign` forms one cohort per block per round; each
member trains its block with `privacy.dpsgd.train_block_dp` (Opacus DP-SGD, Poisson rate q, per-example clip C,
noise z C; the per-example loss is `text_mdm.block_loss` of that block), its `PrivacyLedger` reserves and settles
the step (all rounds and blocks composed per company, RDP accountant); the delta (trained - received) is clipped
to L2 <= update_clip (`privacy.mechanisms.clip_vector`) and summed by dblocks' SecAgg+ (`privacy.secagg`:
SecAggServer, one SecAggClient per company, LocalNetwork, `plan_round`/`run_round`, one instance per block per
round, round r+1 planned before round r runs); the server adds central noise (`add_central_noise`, z_c = 0 here:
record-level DP only) to the mean over the aggregate's `count` and adds it to the block (server lr 1).

Rows (test-split bits per byte from the MDM ELBO, `text_mdm.nelbo_bits`, on evenly spaced windows of the held-out
documents of the private sources, and of the public source for reference): pretrained on public only; federated
fine-tuning without DP; federated with record-level DP (epsilon <= 8 at delta 1e-5). Both federated rows start
from the same pretrained blocks and run the same rounds, steps, sample rate and learning rate; only the noise
and the per-example clipping differ.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python bench/text_federated.py          # ~25 min on a loaded 2-core box
    .venv/bin/python bench/text_federated.py --quick                                 # smoke run (~1 min)
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import multiprocessing
import sys
import tempfile
import time
import types
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, update_summary, write_json  # noqa: E402

from dblocks.shared import text_mdm as mdm  # noqa: E402
from dblocks.shared.text import Document, TokenStream, stdlib_corpus  # noqa: E402

PUBLIC_SOURCES = ("toplevel",)  # the stdlib's top-level modules: general Python, what anyone can publish
RUN_ID = "text-federated"


@dataclass(frozen=True)
class FedTextSetting:
    """One federated row. Every company trains one block per round: `steps` DP-SGD steps at Poisson rate
    `sample_rate` over its records, per-example clip `record_clip`, noise multiplier `record_noise` (0: no DP,
    then record_clip is set so high that it never bites), AdamW at `lr` (cosine over rounds, `round_lr`)."""

    rounds: int
    steps: int
    sample_rate: float
    lr: float
    record_noise: float
    record_clip: float
    update_clip: float  # L2 clip of a company's block delta (SecAgg's quantisation range assumes it)
    cohort_size: int
    central_noise: float = 0.0  # client-level z_c on the released mean (0: record-level DP only)
    server_lr: float = 1.0
    delta: float = 1e-5

    @property
    def dp(self) -> bool:
        return self.record_noise > 0


# ---------------------------------------------------------------------------------------------------
# data: public and private sources, companies, records
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TextSplit:
    public_train: tuple[Document, ...]
    public_test: tuple[Document, ...]
    private_train: tuple[Document, ...]
    private_test: tuple[Document, ...]


def split_public_private(corpus, public_sources: Sequence[str] = PUBLIC_SOURCES) -> TextSplit:
    """Documents of `public_sources` are public, all others private (train and test splits kept apart)."""
    pub = set(public_sources)
    return TextSplit(
        tuple(d for d in corpus.train if d.source in pub),
        tuple(d for d in corpus.test if d.source in pub),
        tuple(d for d in corpus.train if d.source not in pub),
        tuple(d for d in corpus.test if d.source not in pub),
    )


def assign_sources(docs: Sequence[Document], companies: int) -> list[list[str]]:
    """Whole sources to companies: largest source (bytes) first, each to the company holding the fewest bytes so
    far (ties: lowest index). Deterministic; every company gets at least one source if there are enough."""
    size: dict[str, int] = {}
    for d in docs:
        size[d.source] = size.get(d.source, 0) + len(d.data)
    if len(size) < companies:
        raise ValueError(f"{len(size)} private sources cannot give each of {companies} companies whole sources")
    held: list[list[str]] = [[] for _ in range(companies)]
    load = [0] * companies
    for src in sorted(size, key=lambda s: (-size[s], s)):
        i = min(range(companies), key=lambda c: (load[c], c))
        held[i].append(src)
        load[i] += size[src]
    return held


def records_of(docs: Sequence[Document], seq_len: int) -> torch.Tensor:
    """(N, seq_len) LongTensor: every document cut into non-overlapping windows (a short tail is dropped)."""
    rows = [
        np.frombuffer(d.data[: len(d.data) // seq_len * seq_len], dtype=np.uint8).reshape(-1, seq_len)
        for d in docs
        if len(d.data) >= seq_len
    ]
    if not rows:
        raise ValueError(f"no document holds a full window of {seq_len} bytes")
    return torch.from_numpy(np.concatenate(rows).astype(np.int64))


def eval_windows(docs: Sequence[Document], seq_len: int, count: int) -> torch.Tensor:
    """`count` windows evenly spaced over the non-overlapping windows of the documents' concatenation (so every
    part of the held-out split is scored, not just its first documents)."""
    all_windows = TokenStream(docs).windows(seq_len)
    idx = np.unique(np.linspace(0, len(all_windows) - 1, min(count, len(all_windows))).round().astype(int))
    return all_windows[torch.from_numpy(idx)]


def bits_per_byte(model: mdm.MaskedDiffusionLM, cfg: mdm.Config, windows: torch.Tensor, seed: int = 0) -> dict:
    """ELBO bits per byte (T1's `nelbo_bits`) with the same stratified mask rates for every model compared."""
    bits = mdm.nelbo_bits(model, windows, mdm.eval_mask_rates(len(windows), cfg.eval_points, seed), seed)
    return {"bpc": float(bits.mean()), "bpc_se": float(bits.std(ddof=1) / math.sqrt(len(bits))), "bits": bits.tolist()}


def paired_gain(rows: dict, base: str = "pretrained on public only") -> None:
    """Per eval set and row: mean and standard error of (base - row) bits per byte over the same windows and mask
    rates (paired, so much tighter than either row's own standard error); the per-window bits are then dropped."""
    for name, row in rows.items():
        for split, ev in row.items():
            if isinstance(ev, dict) and "bits" in ev and name != base:
                d = np.array(rows[base][split]["bits"]) - np.array(ev["bits"])
                ev["gain_vs_pretrained"] = {"mean": float(d.mean()), "se": float(d.std(ddof=1) / math.sqrt(len(d)))}
    for row in rows.values():
        for ev in row.values():
            if isinstance(ev, dict):
                ev.pop("bits", None)


# ---------------------------------------------------------------------------------------------------
# one company's block update (the client side of a round)
# ---------------------------------------------------------------------------------------------------
def flat_params(module: torch.nn.Module) -> np.ndarray:
    return np.concatenate([p.detach().double().numpy().ravel() for p in module.parameters()])


def mdm_loss_fn(cfg: mdm.Config, block: int) -> Callable:
    """`loss_fn(module, xb, yb, generator)` for `train_block_dp`: T1's per-example `block_loss` of `block` computed
    through the Opacus-wrapped module (a company holds only that block; block_loss needs of the whole model only
    `end_to_end`, to pick the block's mask-rate interval)."""
    whole = types.SimpleNamespace(end_to_end=False)

    def loss(module, xb, _yb, gen):
        return mdm.block_loss(whole, cfg, block, xb, gen, forward=module)  # type: ignore[arg-type]

    return loss


@dataclass
class CompanyUpdate:
    clipped: np.ndarray  # float64 delta clipped to L2 <= update_clip: what SecAgg aggregates
    norm_before_clip: float
    epsilon_after: float  # the company's ledger after this release (all its rounds and blocks)
    seconds: float


def company_update(
    cfg: mdm.Config,
    block: int,
    weights: dict[str, torch.Tensor],
    records: torch.Tensor,
    s: FedTextSetting,
    round_: int,
    lr: float,
    ledger,
    generator: torch.Generator,
) -> CompanyUpdate:
    """The product's client steps for one text block: reserve in the ledger, DP-SGD, delta, clip, settle."""
    from dblocks.privacy.accounting import MechanismStep
    from dblocks.privacy.dpsgd import DPConfig, train_block_dp
    from dblocks.privacy.mechanisms import clip_vector
    from dblocks.shared.training import TrainConfig

    t0 = time.perf_counter()
    net = mdm.Denoiser(cfg, cfg.total_layers // cfg.num_blocks)
    net.load_state_dict(weights)
    n = len(records)
    dp = DPConfig(
        noise_multiplier=s.record_noise,
        max_grad_norm=s.record_clip,
        batch_size=s.sample_rate * n,
        steps=s.steps,
        delta=s.delta,
        accountant="rdp",
        # "hooks": per-example gradients materialised (the recorded rows were measured so); ghost clipping works
        # too since the MDM's position ids are contiguous, and for a block this small the memory is no concern.
        grad_sample_mode="hooks",
    )
    reservation = ledger.reserve(
        RUN_ID, round_, block, 0, MechanismStep(s.record_noise, s.sample_rate, s.steps), s.delta, n
    )
    before = flat_params(net)
    train_cfg = TrainConfig(epochs=1, lr=lr, weight_decay=0.0, warmup=0.0, decay=False, grad_clip=math.inf)
    y = torch.zeros(n, dtype=torch.long)  # unused by the MDM loss
    report = train_block_dp(net, block, records, y, train_cfg, dp, loss_fn=mdm_loss_fn(cfg, block), generator=generator)
    if report.steps != s.steps or not math.isclose(report.sample_rate, s.sample_rate, rel_tol=1e-9):
        raise RuntimeError(f"DP-SGD ran q={report.sample_rate}, {report.steps} steps; asked {s.sample_rate}, {s.steps}")
    delta = flat_params(net) - before
    norm = float(np.linalg.norm(delta))
    clipped = clip_vector(delta, s.update_clip)
    entry = ledger.settle(reservation)
    return CompanyUpdate(clipped, norm, entry.epsilon_after, time.perf_counter() - t0)


# ---------------------------------------------------------------------------------------------------
# the federation (server side + in-process companies)
# ---------------------------------------------------------------------------------------------------
@dataclass
class RoundReport:
    round: int
    cohorts: dict[str, list[str]]
    aggregates: dict  # block -> privacy.secagg Aggregate (sum of the clipped deltas, count, error_bound)
    released: dict[str, np.ndarray]  # block -> the (centrally noised) mean added to the block
    updates: dict[tuple[str, str], CompanyUpdate] = field(default_factory=dict)  # (block, company) -> its update
    seconds: float = 0.0


class TextFederation:
    """Rounds of the product's round code on a MaskedDiffusionLM, in one process.

    `companies`: company id -> its (N, seq_len) records. The model is updated in place. Keep `keep_updates` to
    retain every company's clipped delta in the round reports (tests)."""

    def __init__(
        self,
        model: mdm.MaskedDiffusionLM,
        cfg: mdm.Config,
        companies: dict[str, torch.Tensor],
        s: FedTextSetting,
        seed: int,
        workdir: Path,
        keep_updates: bool = False,
    ) -> None:
        from dblocks.client.ledger import PrivacyLedger
        from dblocks.privacy.secagg import (
            Identity,
            Layout,
            LocalNetwork,
            SecAggClient,
            SecAggServer,
            TrustStore,
            plan_round,
        )

        if model.end_to_end:
            raise ValueError("the federation trains DiffusionBlocks, one block per cohort; got the end-to-end model")
        self.model, self.cfg, self.s, self.seed = model, cfg, s, seed
        self.ids = sorted(companies)
        self.records = companies
        self.keep_updates = keep_updates
        self.ledgers = {
            cid: PrivacyLedger(workdir / f"{cid}.json", budget=math.inf, delta=s.delta, accountant="rdp")
            for cid in self.ids
        }
        self.rng = np.random.default_rng(seed)
        B = model.num_blocks
        self.shapes = {b: [tuple(p.shape) for p in model.denoisers[b].parameters()] for b in range(B)}
        layouts = {
            str(b): Layout(dim=sum(int(np.prod(sh)) for sh in self.shapes[b]), clip_norm=s.update_clip)
            for b in range(B)
        }
        self.layouts = layouts
        # identities pinned out of band (the registry's signed directory in the product): no trust on first use
        identities = {cid: Identity(cid) for cid in self.ids}
        pinned = {cid: ident.public for cid, ident in identities.items()}
        self.pending: dict[tuple[int, str], tuple[int, dict[str, torch.Tensor], float]] = {}
        self.current: RoundReport | None = None
        self.net = LocalNetwork(
            {cid: SecAggClient(cid, identities[cid], trust=TrustStore(dict(pinned), tofu=False)) for cid in self.ids},
            {cid: self._contribute(cid) for cid in self.ids},
        )
        self.server = SecAggServer(trust=TrustStore(dict(pinned), tofu=False))
        self.cohorts = self._cohorts_of(1)
        plan_round(self.server, 1, self.cohorts, layouts, self.net)

    def _cohorts_of(self, r: int) -> dict[str, list[str]]:
        from dblocks.server.federation.scheduler import NodeInfo, assign

        plan = assign(
            [NodeInfo(i) for i in range(len(self.ids))], self.model.num_blocks, r, self.s.cohort_size, 3, seed=self.seed
        )
        if not plan.cohorts:  # with fewer than 3 B companies the blocks take turns (the others are 'skipped')
            raise RuntimeError(f"round {r}: no block can be trained: {plan.skipped}")
        return {str(b): [self.ids[c] for c in cohort] for b, cohort in plan.cohorts.items()}

    def _contribute(self, cid: str):
        from dblocks.privacy.secagg import Contribution

        def at_upload(plan) -> Contribution:
            block, weights, lr = self.pending.pop((plan.round, cid))
            # the company's draws: seeded here so that a benchmark row is reproducible (the product's client uses
            # `secret_generator()`, seeded from the OS's entropy)
            g = torch.Generator().manual_seed(self.seed * 7919 + plan.round * 101 + self.ids.index(cid))
            upd = company_update(
                self.cfg, block, weights, self.records[cid], self.s, plan.round, lr, self.ledgers[cid], g
            )
            if self.current is not None:
                self.current.updates[(str(block), cid)] = (
                    upd if self.keep_updates else replace(upd, clipped=np.empty(0))
                )
            return Contribution(upd.clipped)

        return at_upload

    def round(self, r: int) -> RoundReport:
        from dblocks.privacy.mechanisms import add_central_noise
        from dblocks.privacy.secagg import plan_round, run_round
        from dblocks.server.federation.config import round_lr

        t0 = time.perf_counter()
        nxt = self._cohorts_of(r + 1) if r < self.s.rounds else None
        if nxt is not None:
            plan_round(self.server, r + 1, nxt, self.layouts, self.net)
        lr = round_lr(self.s.lr, r, self.s.rounds)
        for b, cohort in self.cohorts.items():
            weights = {k: v.detach().clone() for k, v in self.model.denoisers[int(b)].state_dict().items()}
            for cid in cohort:
                self.pending[(r, cid)] = (int(b), weights, lr)
        report = RoundReport(r, dict(self.cohorts), {}, {})
        self.current = report
        result = run_round(self.server, r, self.net)
        if result.failures:
            raise RuntimeError(f"round {r}: secure aggregation failed: {result.failures}")
        for b, agg in result.aggregates.items():
            mean = [agg.mean_update.astype(np.float64)]
            (noised,), _ = add_central_noise(mean, self.s.update_clip, self.s.central_noise, agg.count, self.rng)
            vec = torch.from_numpy(np.asarray(noised, dtype=np.float32))
            with torch.no_grad():
                torch.nn.utils.vector_to_parameters(
                    torch.nn.utils.parameters_to_vector(self.model.denoisers[int(b)].parameters())
                    + self.s.server_lr * vec,
                    self.model.denoisers[int(b)].parameters(),
                )
            report.aggregates[b] = agg
            report.released[b] = np.asarray(noised, dtype=np.float64)
        self.cohorts = nxt or {}
        self.current = None
        report.seconds = time.perf_counter() - t0
        return report

    def epsilon(self) -> float:
        """The largest record-level epsilon over companies, every release of the run composed (RDP)."""
        from dblocks.privacy.accounting import epsilon

        if not self.s.dp:
            return math.inf
        return max(epsilon([e.mechanism for e in led.entries], self.s.delta, "rdp") for led in self.ledgers.values())


# ---------------------------------------------------------------------------------------------------
# the benchmark
# ---------------------------------------------------------------------------------------------------
def federated_row(
    model: mdm.MaskedDiffusionLM,
    cfg: mdm.Config,
    companies: dict[str, torch.Tensor],
    s: FedTextSetting,
    evals: dict[str, torch.Tensor],
    seed: int,
    name: str,
) -> dict:
    torch.set_num_threads(1)
    model = copy.deepcopy(model)
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        fed = TextFederation(model, cfg, companies, s, seed, Path(tmp))
        norms: list[float] = []
        train_s: list[float] = []
        for r in range(1, s.rounds + 1):
            rep = fed.round(r)
            norms += [u.norm_before_clip for u in rep.updates.values()]
            train_s.append(sum(u.seconds for u in rep.updates.values()))
            print(f"[{name}] round {r}/{s.rounds}: {rep.seconds:.0f} s", flush=True)
        eps = fed.epsilon()
        entries = {cid: len(led.entries) for cid, led in fed.ledgers.items()}
    row = {k: bits_per_byte(model, cfg, w, seed) for k, w in evals.items()}
    return {
        **row,
        "epsilon_rdp": eps,
        "delta": s.delta,
        "releases_per_company": entries,
        "dp_steps_per_company": s.rounds * s.steps,
        "update_norm_before_clip": {
            "median": float(np.median(norms)),
            "max": float(np.max(norms)),
            "fraction_clipped": float(np.mean(np.array(norms) > s.update_clip)),
        },
        "training_seconds_total": float(sum(train_s)),
        "seconds": time.time() - t0,
    }


def evals_of(rows: dict) -> list[tuple[str, dict]]:
    return [(f"{name}/{k}", v) for name, row in rows.items() for k, v in row.items() if k.endswith("_test")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny model, 2 rounds")
    ap.add_argument("--companies", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pretrain-steps", type=int, default=150, help="AdamW steps per block on the public part")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--steps", type=int, default=2, help="DP-SGD steps per company per round")
    ap.add_argument("--sample-rate", type=float, default=0.02, help="Poisson rate q over a company's windows")
    ap.add_argument(
        "--lr", type=float, default=2e-3, help="company AdamW lr, the preset peak (cosine over rounds to lr / 10)"
    )
    ap.add_argument("--record-clip", type=float, default=1.0)
    ap.add_argument("--update-clip", type=float, default=10.0)
    ap.add_argument("--epsilon", type=float, default=8.0, help="record-level target (RDP, delta 1e-5, all rounds)")
    ap.add_argument("--eval-windows", type=int, default=256)
    ap.add_argument("--jobs", type=int, default=2, help="federated rows run in parallel processes")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t_start = time.time()
    from dblocks.privacy.accounting import noise_for_epsilon

    cfg = mdm.Config()
    if args.quick:
        cfg = replace(cfg, width=32, heads=2, total_layers=3, eval_points=3)
        args.pretrain_steps, args.rounds, args.steps, args.eval_windows = 10, 2, 2, 32
    corpus = stdlib_corpus()
    split = split_public_private(corpus)
    held = assign_sources(split.private_train, args.companies)
    ids = [f"company{i:02d}" for i in range(args.companies)]
    companies = {
        cid: records_of([d for d in split.private_train if d.source in set(src)], cfg.seq_len)
        for cid, src in zip(ids, held)
    }
    if args.quick:
        companies = {cid: r[:400] for cid, r in companies.items()}
    B = cfg.num_blocks
    cohort = args.companies // B
    steps_per_company = args.rounds * args.steps  # every company trains one block in every round
    z = noise_for_epsilon(args.epsilon, 1e-5, args.sample_rate, steps_per_company, "rdp")
    common = dict(rounds=args.rounds, steps=args.steps, sample_rate=args.sample_rate, lr=args.lr, cohort_size=cohort)
    dp_s = FedTextSetting(record_noise=z, record_clip=args.record_clip, update_clip=args.update_clip, **common)
    nodp_s = FedTextSetting(record_noise=0.0, record_clip=1e6, update_clip=args.update_clip, **common)
    evals = {
        "private_test": eval_windows(split.private_test, cfg.seq_len, args.eval_windows),
        "public_test": eval_windows(split.public_test, cfg.seq_len, args.eval_windows),
    }
    setup = {
        "command": "python bench/text_federated.py " + " ".join(sys.argv[1:]),
        "corpus": f"{corpus.name} ({corpus.license}), digest {corpus.digest}",
        "public_sources": list(PUBLIC_SOURCES),
        "public_train_bytes": sum(len(d.data) for d in split.public_train),
        "private_train_bytes": sum(len(d.data) for d in split.private_train),
        "companies": {cid: {"sources": src, "records": len(companies[cid])} for cid, src in zip(ids, held)},
        "record": f"one non-overlapping window of {cfg.seq_len} bytes of one document",
        "eval_windows": {k: len(v) for k, v in evals.items()},
        "eval_sources_private_test": sorted({d.source for d in split.private_test}),
        "model": asdict(cfg),
        "blocks": B,
        "cohort_size": cohort,
        "pretrain_steps_per_block": args.pretrain_steps,
        "dp": asdict(dp_s),
        "no_dp": asdict(nodp_s),
        "dp_steps_per_company": steps_per_company,
        "torch_threads": 1,
        "engine": "in-process simulation of the product's round code (scheduler.assign, privacy.dpsgd.train_block_dp "
        "with text_mdm.block_loss, client PrivacyLedger, clip_vector, dblocks SecAgg+ via privacy.secagg LocalNetwork, "
        "add_central_noise)",
    }
    print(json.dumps(setup, indent=1), flush=True)
    print(
        f"record-level DP: z = {z:.3f}, q = {args.sample_rate}, {steps_per_company} steps per company "
        f"({args.rounds} rounds x {args.steps}), target epsilon {args.epsilon} at delta 1e-5 (RDP)",
        flush=True,
    )
    # --- pretraining on the public part (the operator), then the pretrained-only row
    model = mdm.build(cfg, end_to_end=False, seed=args.seed)
    key = hashlib.sha256(json.dumps([asdict(cfg), args.pretrain_steps, args.seed, corpus.digest]).encode()).hexdigest()
    cache = Path(tempfile.gettempdir()) / f"dblocks-text-federated-pretrained-{key[:16]}.pt"
    t0 = time.time()
    if cache.exists():  # the same pretraining (settings, seed, corpus) done by an earlier run on this machine
        model.load_state_dict(torch.load(cache, weights_only=True))
    else:
        mdm.train(model, cfg, TokenStream(split.public_train), seed=args.seed, steps=args.pretrain_steps)
        torch.save(model.state_dict(), cache)
    pre_seconds = time.time() - t0
    rows = {"pretrained on public only": {k: bits_per_byte(model, cfg, w, args.seed) for k, w in evals.items()}}
    rows["pretrained on public only"]["seconds"] = pre_seconds
    print(f"pretrained ({pre_seconds:.0f} s): {[(k, v['bpc']) for k, v in evals_of(rows)]}", flush=True)
    runs = {"federated, no DP": nodp_s, "federated, record-level DP": dp_s}
    ctx = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=ctx) as pool:
        futures = {
            name: pool.submit(federated_row, model, cfg, companies, s, evals, args.seed, name)
            for name, s in runs.items()
        }
        for name in runs:
            rows[name] = futures[name].result()
            print(
                f"{name}: {[(k, v['bpc']) for k, v in evals_of({name: rows[name]})]}, eps {rows[name]['epsilon_rdp']}"
            )
    paired_gain(rows)
    dp_row = rows["federated, record-level DP"]
    result = {
        "setup": setup,
        "rows": rows,
        "epsilon": {
            "epsilon_rdp": dp_row["epsilon_rdp"],
            "delta": 1e-5,
            "noise_multiplier": z,
            "sample_rate": args.sample_rate,
            "steps_per_company": steps_per_company,
        },
        "seconds": time.time() - t_start,
    }
    out = RESULTS / ("text_federated-quick.json" if args.quick else "text_federated.json")
    write_json(out, result)
    if not args.quick:
        update_summary(
            RESULTS,
            {
                "text.federated_bpc_pretrained": rows["pretrained on public only"]["private_test"]["bpc"],
                "text.federated_bpc_nodp": rows["federated, no DP"]["private_test"]["bpc"],
                "text.federated_bpc_dp": dp_row["private_test"]["bpc"],
                "text.federated_epsilon": dp_row["epsilon_rdp"],
            },
        )
    print(json.dumps({k: {e: v[e]["bpc"] for e in ("private_test", "public_test")} for k, v in rows.items()}, indent=1))
    print(f"epsilon {dp_row['epsilon_rdp']:.2f} (delta 1e-5, RDP), total {time.time() - t_start:.0f} s")


if __name__ == "__main__":
    main()
