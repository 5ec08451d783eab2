"""ComfyUI's WebSocket ``/ws?clientId=``: a client's prompts, as ComfyUI reports them.

On connect: ``status`` (queue_remaining). For each prompt the client sent (its
``client_id``): ``execution_start``, ``execution_cached``, ``executing`` {node} and
``progress`` {value, max} while a job samples, ``executed`` {node, output} per output
node when a job's image is ready, then ``executing`` {node: null} and
``execution_success`` (or ``execution_error`` / ``execution_interrupted``) and a new
``status``. Job records are polled, so any replica can serve any client.

Auth: with API keys configured the upgrade request must carry ``Authorization:
Bearer <key>``; otherwise the socket is closed with 1008 (policy violation).
The real server needs a WebSocket library next to uvicorn (``websockets``/``wsproto``).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from starlette.concurrency import run_in_threadpool

from common.job import ID_PATTERN
from common.status import JobRecord, JobStatus
from producer.api.auth import ApiKeys
from producer.api.comfy_history import (
    OUTPUT_SUBFOLDER,
    ComfyState,
    finished,
    history_entry,
    output_filename,
)
from producer.client import Client

router = APIRouter()
POLL_S = 0.3
# How often a connection checks the whole queue's length (a scan of the active prompts).
QUEUE_CHECK_S = 2.0
Message = dict[str, Any]


@dataclass
class _Seen:
    """What a client has been told of one prompt."""

    started: bool = False
    node: str | None = None
    steps: dict[int, tuple[int, int]] = field(default_factory=dict)
    shown: set[int] = field(default_factory=set)


class Watcher:
    """The messages due to one client since the last poll."""

    def __init__(self, state: ComfyState, client_id: str) -> None:
        self.state = state
        self.client_id = client_id
        self.after = 0
        self.watching: dict[str, _Seen] = {}
        # Like ComfyUI, every client hears when the queue length changes: some clients
        # wait for queue_remaining == 0 when their own prompt ended before they listened.
        self.remaining_sent: int | None = None
        self.next_queue_check = 0.0

    def start(self) -> list[Message]:
        """The first ``status``; the client's unfinished prompts are followed from now."""
        for prompt_id, number in self.state.client_prompts(self.client_id, 0):
            self.after = max(self.after, number)
            record = self.state.load(prompt_id)
            if record is not None and not finished(self.state.jobs(record)):
                self.watching[prompt_id] = _Seen()
        status = self._status()
        self.remaining_sent = status["data"]["status"]["exec_info"]["queue_remaining"]
        self.next_queue_check = time.monotonic() + QUEUE_CHECK_S
        return [status]

    def poll(self) -> list[Message]:
        """Messages for what changed since the last poll."""
        for prompt_id, number in self.state.client_prompts(self.client_id, self.after):
            self.after = max(self.after, number)
            self.watching[prompt_id] = _Seen()
        messages: list[Message] = []
        for prompt_id, seen in list(self.watching.items()):
            ended = self._prompt(prompt_id, seen, messages)
            if ended:
                del self.watching[prompt_id]
        if any(m["type"] in ("execution_start", "execution_success", "execution_error",
                             "execution_interrupted") for m in messages):
            messages.append(self._status())
        elif time.monotonic() >= self.next_queue_check:
            self.next_queue_check = time.monotonic() + QUEUE_CHECK_S
            status = self._status()
            if status["data"]["status"]["exec_info"]["queue_remaining"] != self.remaining_sent:
                messages.append(status)
        if any(m["type"] == "status" for m in messages):
            self.remaining_sent = messages[-1]["data"]["status"]["exec_info"]["queue_remaining"]
        return messages

    def _status(self) -> Message:
        remaining = len(self.state.active())
        return {"type": "status", "data": {"status": {"exec_info": {
            "queue_remaining": remaining}}, "sid": self.client_id}}

    def _prompt(self, prompt_id: str, seen: _Seen, out: list[Message]) -> bool:
        """Append the prompt's news to ``out``; True once it has ended (or expired)."""
        record = self.state.load(prompt_id)
        if record is None:
            return True
        jobs = self.state.jobs(record)
        base = {"prompt_id": prompt_id}
        if not seen.started and any(j is not None and j.status is not JobStatus.QUEUED
                                    and j.status is not JobStatus.WAITING for j in jobs):
            seen.started = True
            now = int(time.time() * 1000)
            out.append(_msg("execution_start", {**base, "timestamp": now}))
            out.append(_msg("execution_cached", {**base, "nodes": [], "timestamp": now}))
        for index, job in enumerate(jobs):
            if job is None:
                continue
            node = record.job_nodes[index] if index < len(record.job_nodes) else ""
            if job.status is JobStatus.RUNNING and job.total_steps:
                self._progress(seen, index, node, job, base, out)
            if job.status is JobStatus.SUCCEEDED and index not in seen.shown:
                seen.shown.add(index)
                if job.total_steps:
                    # A fast job may finish between polls: clients still see the sampler
                    # run to its last step before its output.
                    self._progress(seen, index, node, job, base, out)
                image = {"filename": output_filename(job), "subfolder": OUTPUT_SUBFOLDER,
                         "type": "output"}
                for output in record.job_outputs[index]:
                    out.append(_msg("executing", {**base, "node": output,
                                                  "display_node": output}))
                    out.append(_msg("executed", {**base, "node": output, "display_node": output,
                                                 "output": {"images": [image]}}))
        if not finished(jobs):
            return False
        entry = history_entry(record, jobs)
        last = entry["status"]["messages"][-1]
        if last[0] == "execution_success":
            out.append(_msg("executing", {**base, "node": None, "display_node": None}))
        out.append(_msg(last[0], last[1]))
        return True

    @staticmethod
    def _progress(seen: _Seen, index: int, node: str, job: JobRecord, base: Message,
                  out: list[Message]) -> None:
        if seen.node != node:
            seen.node = node
            out.append(_msg("executing", {**base, "node": node, "display_node": node}))
        step = (job.step, job.total_steps)
        if seen.steps.get(index) != step:
            seen.steps[index] = step
            out.append(_msg("progress", {**base, "value": job.step, "max": job.total_steps,
                                         "node": node}))


def _msg(type_: str, data: Message) -> Message:
    return {"type": type_, "data": data}


def _authorised(keys: ApiKeys, header: str) -> bool:
    scheme, _, token = header.partition(" ")
    return not keys.enabled or (scheme.lower() == "bearer"
                                and keys.identify(token.strip()) is not None)


@router.websocket("/ws")
async def comfy_ws(websocket: WebSocket) -> None:
    """Follow the prompts sent with this ``clientId`` (one is made up if none is given)."""
    if not _authorised(websocket.app.state.keys, websocket.headers.get("authorization", "")):
        await websocket.close(code=1008)
        return
    await websocket.accept()
    given = websocket.query_params.get("clientId", "")
    client_id = given if ID_PATTERN.fullmatch(given) else uuid.uuid4().hex
    client: Client = websocket.app.state.client
    watcher = Watcher(ComfyState(client), client_id)
    # Messages from the client mean nothing here; reading them notices a hang-up.
    closed = asyncio.create_task(_until_closed(websocket))
    try:
        for message in await run_in_threadpool(watcher.start):
            await websocket.send_json(message)
        while not closed.done():
            for message in await run_in_threadpool(watcher.poll):
                await websocket.send_json(message)
            await asyncio.wait({closed}, timeout=POLL_S)
    except (WebSocketDisconnect, RuntimeError, OSError):  # sent after the client left
        pass
    finally:
        closed.cancel()


async def _until_closed(websocket: WebSocket) -> None:
    while (await websocket.receive())["type"] != "websocket.disconnect":
        pass
