"""The company's message handlers: what its resident worker (client/worker.py) runs for each Flower message.

`dbclient join` keeps one worker process per company with torch, Opacus, the validated data and the SecAgg
and ledger state loaded once; Flower's per-message ClientApp (client/clientapp.py) forwards each message to
it. Without a worker (in-process tests, Flower's simulation engine) the forwarder calls `company_app` itself.

Messages it answers:
  * `query.ping`  — liveness and what the company can offer: memory it allows, record-level budget left
                    (`liveness`; also in every `unmask` reply, which spares the next round's ping).
                    The memory limit is also enforced: a block whose training needs more is refused
                    (client/memory.py) before any record is used or anything is spent.
  * `train.secagg` / `query.secagg` — dblocks' SecAgg+ (the default): the `upload` request carries the
                    company's block (weights + BlockTask); the company trains it and answers with the clipped
                    delta in fixed point under the protocol's masks, nothing else (no metrics, no counts).
                    The other stages (register, join, unmask) exchange keys and shares.
  * `train`       — one block round under Flower's SecAgg+ (`secaggplus_mod` handles the protocol stages;
                    this handler trains when the mod asks for the update). The reply carries only the
                    clipped block delta, masked by the mod; no metrics, no example counts (num_examples=1).
Node configuration (set by `dbclient join`): data-path, ledger-path, progress-path, epsilon-budget, delta,
memory-mb, label-column, image-size, threads (torch threads; 0 = all cores), classes (the run's class list the
company agreed to, `join.encode_classes`; a task with another list is refused). The company's labels are mapped
through the class list every task carries (client/trainer.py `read_company_data`); the data read for a run's
contract is kept (`company_data`) until the file changes.
"""

from __future__ import annotations

import math
import time

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp

company_app = ClientApp()  # the handlers; `clientapp.app` is what Flower loads


def node_settings(context: Context) -> dict:
    """The node configuration `dbclient join` sets; under Flower's simulation engine (bench/scale.py), where a
    virtual company gets only {"partition-id", "num-partitions"}, the same settings for company
    `partition-id` under $DBLOCKS_SIMULATION_DIR (companyN.npz, ledgers/companyN.json)."""
    nc = context.node_config
    if "data-path" in nc or "partition-id" not in nc:
        return nc
    import os

    root = os.environ.get("DBLOCKS_SIMULATION_DIR")
    if not root:
        raise RuntimeError("a simulated company (node_config partition-id) needs DBLOCKS_SIMULATION_DIR")
    pid = int(nc["partition-id"])
    return {
        "data-path": f"{root}/company{pid}.npz",
        "ledger-path": f"{root}/ledgers/company{pid}.json",
        "epsilon-budget": float(os.environ.get("DBLOCKS_SIMULATION_BUDGET", "1000")),
        "threads": 1,
    }


def company_ledger(node_config: dict):
    from .ledger import PrivacyLedger

    return PrivacyLedger(
        node_config["ledger-path"], float(node_config.get("epsilon-budget", 8.0)), float(node_config.get("delta", 1e-5))
    )


def memory_limit_mb(node_config: dict) -> float:
    """The memory (MB) the company allows training to use (`--memory-limit`; 0 or unset: no limit, inf).
    Reported in the ping and enforced before training: a block that needs more is refused."""
    return float(node_config.get("memory-mb", 0)) or float("inf")


def progress_line(node_config: dict, text: str) -> None:
    """Append a line to the company's progress log (`dbclient join` shows it)."""
    path = node_config.get("progress-path")
    if path:
        with open(str(path), "a") as f:
            f.write(f"{time.strftime('%H:%M:%S')} {text}\n")


def liveness(nc: dict, ledger=None) -> ConfigRecord:
    """What the company says about itself: memory training may use (MB, inf: no limit) and record-level budget
    left, rounded down to 0.1 (never up: the server must not think a company can afford more than it can). Sent in
    the ping reply and in the reply to each round's last SecAgg stage (`unmask`), which spares the next round's
    ping (server/federation/serverapp.py `Federation.round`)."""
    ledger = ledger or company_ledger(nc)
    return ConfigRecord(
        {
            "memory_mb": memory_limit_mb(nc),
            "budget_left": math.floor(max(0.0, ledger.budget - ledger.recorded_spent()) * 10) / 10,
        }
    )


@company_app.query("ping")
def ping(msg: Message, context: Context) -> Message:
    nc = node_settings(context)
    ledger = company_ledger(nc)
    try:
        say_if_unaffordable(nc, ledger, msg.content.config_records["ping"])
    except Exception:  # noqa: BLE001 - a word to the company must never stop its liveness reply
        pass
    return Message(RecordDict({"ping": liveness(nc, ledger)}), reply_to=msg)


def say_if_unaffordable(nc: dict, ledger, ping) -> str | None:
    """The ping names the record-level mechanism of one more round (noise, sample_rate, steps, delta): where this
    ledger cannot afford it, one progress line says so (spent, budget, what the next task would bring it to); the
    server skips this company for budget. Returns the line (None where it can afford it or the ping names none)."""
    if "steps" not in ping:
        return None
    from dblocks.privacy.accounting import MechanismStep

    from .ledger import BudgetExceeded

    step = MechanismStep(float(ping["noise"]), float(ping["sample_rate"]), int(ping["steps"]))
    try:
        ledger.check(step, float(ping.get("delta", ledger.delta)))
        return None
    except BudgetExceeded as e:
        line = f"skipped for budget: {e}"
    progress_line(nc, line)
    return line


_DATA: dict[tuple, object] = {}  # (file, its size and mtime, how it is read, the run's contract) -> Dataset
_DATA_KEPT = 4


def company_data(nc: dict, task):
    """The company's file read through the task's data contract (`trainer.read_company_data`), kept between
    messages in a resident worker: read again when the file's size or modification time changes, or for another
    run contract (class list, feature statistics, label column, image size). At most `_DATA_KEPT` are kept."""
    import json
    import os

    from .join import decode_classes
    from .trainer import read_company_data

    path = str(nc["data-path"])
    st = os.stat(path)
    key = (
        path,
        st.st_size,
        st.st_mtime_ns,
        str(nc.get("label-column", "label")),
        int(nc.get("image-size", 0)),
        str(nc.get("classes", "")),
        json.dumps(task.class_names),
        json.dumps(task.feature_stats, sort_keys=True, default=str),
    )
    if key not in _DATA:
        data = read_company_data(
            path,
            task,
            label_column=str(nc.get("label-column", "label")),
            image_size=int(nc.get("image-size", 0)) or None,
            joined_with=decode_classes(str(nc.get("classes", ""))),  # `dbclient join --classes`: agreed to
        )
        while len(_DATA) >= _DATA_KEPT:
            _DATA.pop(next(iter(_DATA)))
        _DATA[key] = data
    return _DATA[key]


def train_block(nc: dict, task, arrays: list):
    """Train the assigned block on the company's data (DP-SGD, ledger) and return the clipped update."""
    from .trainer import train_task

    if int(nc.get("threads", 0)) > 0:  # several companies on one host: avoid OpenMP oversubscription
        import torch

        torch.set_num_threads(int(nc["threads"]))
    try:  # labels mapped through the run's class list (in the task): index k is the same class at every company
        data = company_data(nc, task)
    except Exception as e:
        progress_line(nc, f"round {task.round} block {task.block_index}: REFUSED — {e}")
        raise
    ledger = company_ledger(nc)
    progress_line(
        nc,
        f"round {task.round}: training block {task.block_index} on {len(data)} records "
        f"({task.steps} DP-SGD steps, q={task.sample_rate:g}, z={task.noise_multiplier:g})",
    )

    def progress(step: int, total: int, loss: float) -> None:
        if step == total or step % max(1, total // 4) == 0:
            progress_line(nc, f"round {task.round} block {task.block_index}: step {step}/{total} loss {loss:.4f}")

    try:
        update = train_task(task, arrays, data, ledger, progress, memory_mb=memory_limit_mb(nc))
    except Exception as e:
        progress_line(nc, f"round {task.round} block {task.block_index}: REFUSED — {e}")
        raise
    progress_line(
        nc,
        f"round {task.round} block {task.block_index}: sent clipped update (norm {update.norm_before_clip:.3f}"
        f" -> clip {task.update_clip:g}) after {update.report.seconds:.2f} s of training; record-level "
        f"epsilon {update.epsilon_after:.2f} of {ledger.budget:g} at delta {ledger.delta:g}",
    )
    return update


@company_app.train("secagg")
def secagg_upload(msg: Message, context: Context) -> Message:
    from dblocks.privacy.mechanisms import clip_vector
    from dblocks.privacy.secagg import Contribution
    from dblocks.privacy.secagg.flower import flatten_arrays, handle
    from dblocks.shared.fedmsg import BlockTask

    nc = node_settings(context)

    def contribute(plan, msg: Message) -> Contribution:
        task = BlockTask.from_config(dict(msg.content["task"]))
        if str(task.block_index) != plan.block:
            raise ValueError(f"the task is for block {task.block_index}, the protocol plan for block {plan.block}")
        arrays = msg.content["arrays"]
        if not isinstance(arrays, ArrayRecord):
            raise ValueError(f"the message's 'arrays' record is a {type(arrays).__name__}, not an ArrayRecord")
        update = train_block(nc, task, arrays.to_numpy_ndarrays())
        # the delta is clipped in float32; clip_vector in float64 keeps it within the plan's bound after rounding
        return Contribution(clip_vector(flatten_arrays(update.delta), task.update_clip))

    return handle(msg, context, contribute)


@company_app.query("secagg")
def secagg_stage(msg: Message, context: Context) -> Message:
    from dblocks.privacy.secagg.flower import CONFIG_RECORD, handle

    reply = handle(msg, context)
    request = msg.content.config_records.get(CONFIG_RECORD)
    # the round's last exchange: say what the ping would (the server then skips this company's next ping)
    if request is not None and request.get("stage") == "unmask":
        reply.content["ping"] = liveness(node_settings(context))
    return reply


@company_app.train(mods=[secaggplus_mod])
def train(msg: Message, context: Context) -> Message:
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.compat.common import recorddict_compat as compat

    from dblocks.shared.fedmsg import BlockTask

    fitins = compat.recorddict_to_fitins(msg.content, keep_input=True)
    task = BlockTask.from_config(dict(fitins.config))
    update = train_block(node_settings(context), task, parameters_to_ndarrays(fitins.parameters))
    fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(update.delta), num_examples=1, metrics={})
    return Message(compat.fitres_to_recorddict(fitres, keep_input=False), reply_to=msg)
