"""The company worker as Flower's ClientApp executor: it takes the SuperNode's ClientApp tasks itself and runs
them in its own (warm) process, instead of Flower starting `flower-superexec`, which starts one `flwr-clientapp`
process per message.

Flower 1.41 has the pieces but no long-running ClientApp (flwrlabs/flower#3670 is open; its "warm executor"
pools are Kubernetes pods for AgentApp/model/connector tasks, one task each). Its SuperNode's
`--isolation process` mode leaves task execution to a process outside the SuperNode, which asks the SuperNode's
Runtime API for tasks (`AcquireTask`, authenticated by the SuperExec HMAC secret of
`--superexec-auth-secret-file`: a per-join secret in a 0600 file in a 0700 directory) and runs each task with
its one-time token, exactly as `flwr-clientapp` does (flwr.supernode.runtime.run_clientapp): pull the message,
context, run and FAB; heartbeat while it works; push the reply and the context. This loop does those steps with
Flower's own functions, in-process, one task at a time (the SuperNode hands out one message at a time anyway):

    AcquireTask(flwr-clientapp) -> token -> pull_task_input -> check the FAB (app guard's policy) ->
    CompanyWorker.answer_message (journal: each message id at most once; client/handlers.py) ->
    push_message (reply) -> push_task_output (context, status)

What is run is decided twice: the SuperNode verifies every FAB before it stores a run (client/appguard.py, only
the dblocks manifest is vouched for), and this loop checks the FAB of each task again with `check_fab` and runs
only `handlers.company_app`; any other FAB is answered with an error, never loaded. A task whose worker dies
stops heartbeating; the SuperNode then answers the server with an error for it (Flower's task expiry), and a
new worker refuses its message id (the journal).
"""

from __future__ import annotations

import logging
import threading

from .worker import CompanyWorker

log = logging.getLogger("dblocks.worker")
POLL_SECONDS = 0.25  # how often an idle worker asks the SuperNode for a task (a local HTTP request)


def _heartbeat_fn(client):
    """Flower's task heartbeat without its SIGINT on a refused heartbeat (that would stop the whole worker)."""
    import httpx
    from flwr.proto.runtime_pb2 import SendTaskHeartbeatRequest

    request = SendTaskHeartbeatRequest()

    def fn() -> bool:
        try:
            return bool(client.SendTaskHeartbeat(request).success)
        except (httpx.TransportError, httpx.HTTPStatusError):
            return False

    return fn


def run_task(address: str, token: str, worker: CompanyWorker) -> None:
    """One ClientApp task, as flwr-clientapp runs it, in this process."""
    from flwr.app import Message
    from flwr.app.error import Error
    from flwr.common.constant import ErrorCode, SubStatus
    from flwr.supercore.heartbeat import HeartbeatSender
    from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient
    from flwr.supernode.runtime.run_clientapp import pull_task_input, push_message, push_task_output

    from .appguard import check_fab

    retry = make_simple_http_retry_invoker()
    client = RuntimeHttpClient.from_server_address(
        server_address=address,
        insecure=True,  # 127.0.0.1, the SuperNode's own Runtime API (as for flwr-clientapp)
        root_certificates=None,
        interceptors=[
            RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
            RuntimeTokenHttpInterceptor(token),
        ],
        retry_invoker=retry,
    )
    heartbeat = HeartbeatSender(_heartbeat_fn(client))
    heartbeat.start()
    message = context = reply = None
    sub_status, details = SubStatus.FAILED, "ClientApp task failed due to unknown reason"
    try:
        message, context, _run, fab = pull_task_input(client)
        problems = check_fab(fab.content)
        if problems:
            raise PermissionError(f"refused the app of this run: it {'; it '.join(problems)}")
        reply = worker.answer_message(message, context)
        sub_status, details = SubStatus.COMPLETED, ""
    except Exception as ex:  # noqa: BLE001 - as flwr-clientapp: the error goes back to the server as the reply
        details = str(type(ex)) + ":<'" + str(ex) + "'>"
        if message is not None:
            reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=details), reply_to=message)
    finally:
        try:
            if reply is not None and context is not None:
                push_message(client, reply, context)
        finally:
            retry.max_tries = 1
            push_task_output(client=client, context=context, sub_status=sub_status, details=details)
            heartbeat.stop()
            client.close()


def _run_task_logged(address: str, token: str, worker: CompanyWorker) -> None:
    try:
        run_task(address, token, worker)
    except Exception:  # noqa: BLE001 - the task fails (the SuperNode answers it with an error); go on
        log.exception("ClientApp task failed outside its handler")


def run_tasks(
    address: str,
    auth_secret: bytes,
    worker: CompanyWorker,
    stop: threading.Event,
    ready: threading.Event | None = None,
) -> None:
    """Take the SuperNode's ClientApp tasks and run each in a thread of its own, until `stop` is set; the first once
    `ready` (the worker's warm-up, which imports in another thread) is set, so imports never run in two threads."""
    while ready is not None and not ready.wait(0.2):
        if stop.is_set():
            return
    from flwr.proto.runtime_pb2 import AcquireTaskRequest
    from flwr.supercore.constant import TaskType
    from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor, SuperExecAuthHttpInterceptor
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient

    from dblocks.shared.procs import shorten_object_pull_retries

    shorten_object_pull_retries()  # a task taken before its SuperNode stored the input waits 0.05 s, not 1 s
    retry = make_simple_http_retry_invoker()
    retry.max_time = 10.0  # Flower's retries forever; a SuperNode gone for good must let `stop` end this loop
    client = RuntimeHttpClient.from_server_address(
        server_address=address,
        insecure=True,
        root_certificates=None,
        interceptors=[
            RuntimeVersionHttpInterceptor(component_name="SuperExec"),
            SuperExecAuthHttpInterceptor(
                master_secret=auth_secret, protected_methods=frozenset({"/flwr.proto.Runtime/AcquireTask"})
            ),
        ],
        retry_invoker=retry,
    )
    request = AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP])
    try:
        while not stop.is_set():
            try:
                res = client.AcquireTask(request)
            except Exception:  # noqa: BLE001 - the SuperNode is starting or reconnecting: ask again
                stop.wait(1.0)
                continue
            if res.HasField("task") and res.token:
                # each task in a thread of its own: a task that never gets its input (a message of a run the
                # SuperLink no longer runs after a server restart: Flower's pull then waits for good) must not
                # keep this company from answering the next run's ping. Answers stay once per message id
                # (worker.answer_message) and the ledger and SecAgg state have their own locks.
                threading.Thread(target=_run_task_logged, args=(address, res.token, worker), daemon=True).start()
                continue
            stop.wait(POLL_SECONDS)
    finally:
        client.close()
