"""Every Redis key and pub/sub channel zimage-queue uses, built in one place: :class:`Keys`.

All live under the settings' key prefix (``ZQ_KEY_PREFIX``, ``zq`` by default), written
``{p}`` below; ``{model}`` is a model type's value. Celery's own keys (the queue lists
``zq.{model}``, kombu's ``unacked`` hash...) are kombu's, not built here. The scripts named
in "written by" are the files of ``common/lua/``.

Jobs (common/jobstore.py and its scripts in common/lua/):

------------------------  ------  ------------------------------------  ----------------------------
key                       type    holds                                 written by
------------------------  ------  ------------------------------------  ----------------------------
{p}:job:{id}              hash    a job's record: spec, model, status,  the job store's scripts;
                                  times, worker, step, deliveries,      JobStore (progress, cancel,
                                  error, webhook, cancel flag; expires  webhook); aging; a stalled
                                  ZQ_RECORD_TTL_S after its end         worker
{p}:lease:{id}            string  the id of the worker running the      claim; the worker's liveness
                                  job; its TTL running out means the    thread renews it
                                  worker died
{p}:children:{id}         set     ids of the jobs waiting on this one   submit; the ending scripts
                                                                        delete it
{p}:running:{model}       set     ids of the model's running jobs       claim; finish, retry_later
                                                                        and requeue remove
{p}:unpublished:{model}   zset    queued jobs whose Celery message may  submit, finish (children),
                                  not have been sent, by queued time    requeue, due; JobStore and
                                                                        cancel remove
{p}:retry:{model}         zset    jobs put back after infrastructure    retry_later; due and cancel
                                  trouble, by the time they wait for    remove
{p}:conversation:{id}     zset    a conversation's job ids, by submit   submit
                                  time
------------------------  ------  ------------------------------------  ----------------------------

Workers (worker/liveness.py, common/deadletters.py):

------------------------  ------  ------------------------------------  ----------------------------
key                       type    holds                                 written by
------------------------  ------  ------------------------------------  ----------------------------
{p}:worker:{id}           hash    a worker's registry record: model,    WorkerRegistry; jobs_done by
                                  pid, host, ready, heartbeat, current  finish
                                  job, jobs_done; expires when beats
                                  stop
{p}:workers:{model}       set     the model's worker ids                WorkerRegistry;
                                                                        JobStore.prune_workers
                                                                        removes
{p}:chores:{model}        string  the worker doing the model's fleet-   ChoresLock (chores_elect,
                                  wide chores (PX expiry)               chores_resign)
{p}:dead_letters          list    refused broker messages (JSON),       DeadLetterStore, on workers
                                  newest first, capped
------------------------  ------  ------------------------------------  ----------------------------

Adapter routing (worker/warm_routing.py): which workers hold which LoRA adapters, which
are idle, and the jobs passed to one of them. Each worker also consumes a queue of its own,
``zq.{model}.to.{worker id}`` (kombu's keys, like the shared queues).

------------------------  ------  ------------------------------------  ----------------------------
key                       type    holds                                 written by
------------------------  ------  ------------------------------------  ----------------------------
{p}:warm:{model}:{sha}    set     ids of the workers holding the        WarmRouting; pass_job drops
                                  adapter file with that sha256         dead workers
{p}:idle:{model}          set     ids of the workers that hold          WarmRouting; pass_job drops
                                  adapters and render nothing now       the worker it picks
{p}:passed:{model}        zset    jobs passed to a warm worker, by the  pass_job; pass_due removes
                                  time they go back to the shared
                                  queue if still not taken
------------------------  ------  ------------------------------------  ----------------------------

Batches (common/batches.py) and webhooks (common/webhooks.py):

------------------------  ------  ------------------------------------  ----------------------------
key                       type    holds                                 written by
------------------------  ------  ------------------------------------  ----------------------------
{p}:batch:{id}            hash    meta, created_at, sealed,             BatchStore, batch_add,
                                  finished_at, jobs_ended,              batch_seal, ending_lib
                                  jobs_{status}
{p}:batch:{id}:rows       hash    manifest line -> JSON row             BatchStore.add_row
{p}:batch:{id}:pending    set     ids of the batch's jobs not yet       batch_add; ending_lib
                                  ended                                 removes
{p}:jobbatches:{id}       set     ids of the batches holding the job    batch_add
{p}:webhook:{kind}:{id}   hash    one subject's webhook: url, delivery  ending_lib; WebhookOutbox
                                  id, status, attempts, last error,     (zq webhooks)
                                  times
{p}:webhooks:due          zset    {kind}:{id} of owed deliveries, by    the same
                                  next attempt time
------------------------  ------  ------------------------------------  ----------------------------

The ComfyUI routes (producer/api/comfy_history.py, in zq api):

------------------------  ------  ------------------------------------  ----------------------------
key                       type    holds                                 written by
------------------------  ------  ------------------------------------  ----------------------------
{p}:comfy:upload:{name}   string  the storage key of an image uploaded  ComfyState
                                  as name
{p}:comfy:uploads         set     every uploaded name                   ComfyState
{p}:comfy:prompt:{id}     string  a JSON PromptRecord (expires with     ComfyState
                                  job records)
{p}:comfy:prompts         zset    prompt ids by number                  ComfyState
{p}:comfy:active          zset    prompt ids not yet seen finished, by  ComfyState
                                  number
{p}:comfy:client:{id}     zset    the prompt ids a client sent, by      ComfyState
                                  number
{p}:comfy:number          string  the counter numbering prompts         ComfyState
------------------------  ------  ------------------------------------  ----------------------------

Pub/sub channels (common/push.py):

------------------------  ------  ------------------------------------  ----------------------------
key                       type    holds                                 written by
------------------------  ------  ------------------------------------  ----------------------------
{p}:ended:{id}            chan    the job's record (JSON field, value,  ending_lib
                                  ... array) once it ended, while
                                  someone listens
{p}:progress:{id}         chan    "{step}/{total}" of a running job,    JobStore.report_progress
                                  at most every 250 ms
{p}:batch-progress:{id}   chan    the id of a job of the batch that     ending_lib, batch_add
                                  ended
{p}:webhooks:wake         chan    {kind}:{id} whenever a webhook        ending_lib
                                  becomes owed
------------------------  ------  ------------------------------------  ----------------------------

Some scripts build keys themselves from the prefix (``prefix .. ':job:' .. id`` in
``ending_lib.lua``); ``tests/unit/test_keys.py`` checks each one against its builder here.
"""

from __future__ import annotations

from dataclasses import dataclass

from common.job import ModelType

BATCH_PARTS = ("", ":rows", ":pending")
"""The suffixes of a batch's keys: its hash, its rows, its pending job ids."""


@dataclass(frozen=True)
class Keys:
    """Builds the keys and channels under one prefix (the settings' ``key_prefix``)."""

    prefix: str = "zq"

    # -- jobs -----------------------------------------------------------------
    def job(self, job_id: str) -> str:
        """The hash holding a job's record."""
        return f"{self.prefix}:job:{job_id}"

    def lease(self, job_id: str) -> str:
        """The running job's lease: its worker's id, with a TTL the worker renews."""
        return f"{self.prefix}:lease:{job_id}"

    def children(self, job_id: str) -> str:
        """The set of jobs waiting on ``job_id``."""
        return f"{self.prefix}:children:{job_id}"

    def running(self, model: ModelType) -> str:
        """The set of the model's running jobs."""
        return f"{self.prefix}:running:{model.value}"

    def unpublished(self, model: ModelType) -> str:
        """The sorted set of the model's queued jobs whose message may not have been sent."""
        return f"{self.prefix}:unpublished:{model.value}"

    def retry(self, model: ModelType) -> str:
        """The sorted set of the model's jobs waiting out an infrastructure retry."""
        return f"{self.prefix}:retry:{model.value}"

    def conversation(self, conversation_id: str) -> str:
        """The sorted set of a conversation's job ids, by submit time."""
        return f"{self.prefix}:conversation:{conversation_id}"

    # -- workers --------------------------------------------------------------
    def worker(self, worker_id: str) -> str:
        """The hash holding a worker's registry record."""
        return f"{self.prefix}:worker:{worker_id}"

    def workers(self, model: ModelType) -> str:
        """The set of the model's worker ids."""
        return f"{self.prefix}:workers:{model.value}"

    def chores(self, model: ModelType) -> str:
        """The lock naming the worker that does the model's fleet-wide chores."""
        return f"{self.prefix}:chores:{model.value}"

    def warm(self, model: ModelType, sha256: str) -> str:
        """The set of the model's workers holding the adapter file ``sha256``."""
        return f"{self.prefix}:warm:{model.value}:{sha256}"

    def idle(self, model: ModelType) -> str:
        """The set of the model's workers that hold adapters and render nothing now."""
        return f"{self.prefix}:idle:{model.value}"

    def passed(self, model: ModelType) -> str:
        """The sorted set of jobs passed to a warm worker, by when they go back if untaken."""
        return f"{self.prefix}:passed:{model.value}"

    @property
    def dead_letters(self) -> str:
        """The capped list of refused broker messages, newest first."""
        return f"{self.prefix}:dead_letters"

    # -- batches and webhooks -------------------------------------------------
    def batch(self, batch_id: str, part: str = "") -> str:
        """One of a batch's keys: its hash, or ``part`` (one of ``BATCH_PARTS``)."""
        return f"{self.prefix}:batch:{batch_id}{part}"

    def job_batches(self, job_id: str) -> str:
        """The set of the batches holding a job."""
        return f"{self.prefix}:jobbatches:{job_id}"

    def webhook(self, kind: str, subject_id: str) -> str:
        """The hash recording one subject's webhook."""
        return f"{self.prefix}:webhook:{kind}:{subject_id}"

    @property
    def webhooks_due(self) -> str:
        """The sorted set of owed webhook deliveries, by next attempt time."""
        return f"{self.prefix}:webhooks:due"

    # -- the ComfyUI routes ---------------------------------------------------
    def comfy_upload(self, name: str) -> str:
        """The storage key of the image uploaded as ``name``."""
        return f"{self.prefix}:comfy:upload:{name}"

    @property
    def comfy_uploads(self) -> str:
        """The set of every uploaded name."""
        return f"{self.prefix}:comfy:uploads"

    def comfy_prompt(self, prompt_id: str) -> str:
        """A prompt's JSON record."""
        return f"{self.prefix}:comfy:prompt:{prompt_id}"

    @property
    def comfy_prompts(self) -> str:
        """The sorted set of prompt ids by number."""
        return f"{self.prefix}:comfy:prompts"

    @property
    def comfy_active(self) -> str:
        """The sorted set of prompts not yet seen finished."""
        return f"{self.prefix}:comfy:active"

    def comfy_client(self, client_id: str) -> str:
        """The sorted set of the prompts a client sent."""
        return f"{self.prefix}:comfy:client:{client_id}"

    @property
    def comfy_number(self) -> str:
        """The counter numbering prompts."""
        return f"{self.prefix}:comfy:number"

    # -- pub/sub channels -----------------------------------------------------
    def ended(self, job_id: str) -> str:
        """The channel a job's record is published on when it ends."""
        return f"{self.prefix}:ended:{job_id}"

    def progress(self, job_id: str) -> str:
        """The channel a running job's step is published on (``{step}/{total}``)."""
        return f"{self.prefix}:progress:{job_id}"

    def batch_progress(self, batch_id: str) -> str:
        """The channel naming each of a batch's jobs as it ends."""
        return f"{self.prefix}:batch-progress:{batch_id}"

    @property
    def webhooks_wake(self) -> str:
        """The channel a webhook's ``{kind}:{id}`` is published on when it becomes owed."""
        return f"{self.prefix}:webhooks:wake"
