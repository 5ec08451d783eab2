"""Sharding: a fleet's Redis instances, which one a job lives on, and finding it again.

A shard is an independent Redis with its own workers (a worker serves one shard: its
``ZQ_REDIS_URL``). Everything a job touches lives on its shard - its record, its broker
message, its children, its batch's bookkeeping, the webhooks it owes - so every script
stays one Redis's atomic step and the guarantees are those of one Redis.

Where a new job goes is a pure function of the job (and where its parent is):

- a turn that names a parent goes to the parent's shard, so a conversation tree is whole;
- a batch row (a catalogue row, a campaign variant) goes to its batch's shard, so the
  batch's progress and its one "finished" stay atomic;
- any other job to shard ``crc32(utf-8 routing key) mod N``, the key being its
  conversation id: the same rule in any language.

A job is found again on the shard this process last saw it on, else by asking every
shard (one call each). So changing the shard list moves only where new conversations
start; jobs already recorded are found where they are, and their turns follow them.
"""

from __future__ import annotations

import threading
import zlib
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import redis

from common.errors import ConfigError, JobNotFound
from common.job import JobSpec
from common.jobstore import JobStore
from common.settings import Settings

if TYPE_CHECKING:
    from celery import Celery

# Where recently seen jobs live, so following a job costs no search.
_REMEMBERED = 100_000


def shard_index(routing_key: str, count: int) -> int:
    """The shard of a routing key: ``crc32(utf-8 key) mod count``."""
    return zlib.crc32(routing_key.encode("utf-8", "surrogatepass")) % count


@dataclass
class Shard:
    """One Redis of the fleet: its job store and (made on first use) its Celery sender."""

    index: int
    url: str
    jobs: JobStore
    settings: Settings
    _app: Celery | None = field(default=None, repr=False)

    @property
    def app(self) -> Celery:
        """A Celery app whose broker is this shard's Redis (producers only send)."""
        if self._app is None:
            from common.queueing import make_celery

            self._app = make_celery(replace(self.settings, redis_url=self.url),
                                    name="zq-producer" if self.index == 0
                                    else f"zq-producer-{self.index}")
        return self._app


class Shards:
    """Every shard of the fleet, in routing order; the first is the home shard.

    The home shard holds what belongs to no job (the ComfyUI routes' queue numbers,
    upload names and prompt history). With one shard nothing is ever searched.
    """

    def __init__(self, shards: list[Shard]) -> None:
        if not shards:
            raise ConfigError("ZQ_REDIS_SHARDS: at least one Redis is needed")
        self.shards = shards
        self._seen: OrderedDict[str, int] = OrderedDict()
        self._batches: dict[str, int] = {}  # batch id -> the shard found holding it
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings, home: JobStore | None = None) -> Shards:
        """One shard per ``settings.shard_urls``; ``home`` (if given) serves the first."""
        shards = []
        for index, url in enumerate(settings.shard_urls):
            if index == 0 and home is not None:
                jobs = home
            else:
                try:
                    jobs = JobStore.from_url(url, settings.key_prefix, settings.record_ttl_s)
                except ValueError as exc:  # redis-py's verdict on a malformed URL
                    name = "ZQ_REDIS_SHARDS" if settings.redis_shards else "ZQ_REDIS_URL"
                    raise ConfigError(f"{name}: {exc}") from None
            shards.append(Shard(index, url, jobs, settings))
        return cls(shards)

    @property
    def home(self) -> Shard:
        """The first shard: where state that belongs to no job lives."""
        return self.shards[0]

    def __len__(self) -> int:
        return len(self.shards)

    def __iter__(self) -> Iterator[Shard]:
        return iter(self.shards)

    def for_key(self, routing_key: str) -> Shard:
        """The shard a new conversation (or batch) with this key starts on."""
        return self.shards[shard_index(routing_key, len(self.shards))]

    def for_new(self, spec: JobSpec, new_id: bool = False) -> Shard:
        """Where ``spec`` lives: where it already is, else its parent's, else its key's.

        ``new_id``: the id was made just now, so no shard is asked for it (a resubmitted
        id is, one pipelined ``EXISTS`` per shard). Raises ``JobNotFound`` for a parent
        no shard knows.
        """
        # A shard that cannot be reached does not stop jobs routed elsewhere.
        found = None if new_id else self.locate_many([spec.job_id], tolerant=True).get(
            spec.job_id)
        if found is not None:
            return found
        if spec.parent_id is not None:
            parent = self.locate(spec.parent_id)
            if parent is None:
                raise JobNotFound(f"parent job {spec.parent_id} is not known")
            return parent
        return self.for_key(spec.conversation_id)

    def remember(self, job_id: str, shard: Shard) -> None:
        """Note that ``job_id`` lives on ``shard`` (a job never moves)."""
        if len(self.shards) == 1:
            return
        with self._lock:
            self._seen[job_id] = shard.index
            self._seen.move_to_end(job_id)
            while len(self._seen) > _REMEMBERED:
                self._seen.popitem(last=False)

    def locate(self, job_id: str) -> Shard | None:
        """The shard holding ``job_id``'s record, or None; the only shard when there is one."""
        return self.locate_many([job_id]).get(job_id)

    def locate_many(self, job_ids: list[str], tolerant: bool = False) -> dict[str, Shard]:
        """The shard of each known id (unknown ids are left out); one call per shard asked.

        With one shard every id maps to it unasked: its reader reports what is missing.
        An id not found while a shard could not be asked may be there: its Redis error is
        raised, unless ``tolerant`` (then that shard counts as not holding it).
        """
        if len(self.shards) == 1:
            return {job_id: self.shards[0] for job_id in job_ids}
        found: dict[str, Shard] = {}
        with self._lock:
            for job_id in job_ids:
                index = self._seen.get(job_id)
                if index is not None:
                    found[job_id] = self.shards[index]
        unknown = [job_id for job_id in dict.fromkeys(job_ids) if job_id not in found]
        unreachable: redis.RedisError | None = None
        for shard in self.shards:
            if not unknown:
                break
            pipe = shard.jobs.redis.pipeline(transaction=False)
            for job_id in unknown:
                pipe.exists(shard.jobs.job_key(job_id))
            try:
                answers = pipe.execute()
            except redis.RedisError as exc:
                unreachable = unreachable or exc
                continue
            for job_id, exists in zip(unknown, answers, strict=True):
                if exists:
                    found[job_id] = shard
                    self.remember(job_id, shard)
            unknown = [job_id for job_id in unknown if job_id not in found]
        if unknown and unreachable is not None and not tolerant:
            raise unreachable
        return found

    def known(self, job_id: str) -> bool:
        """Whether any shard holds ``job_id``'s record (one shard: asked, not assumed)."""
        if len(self.shards) == 1:
            jobs = self.shards[0].jobs
            return bool(jobs.redis.exists(jobs.job_key(job_id)))
        return self.locate(job_id) is not None

    def grouped(self, job_ids: list[str]) -> tuple[list[tuple[Shard, list[str]]], list[str]]:
        """The distinct ids by the shard holding them (in the order first named), and the
        ids no shard holds."""
        located = self.locate_many(job_ids)
        groups: dict[int, list[str]] = {}
        unknown = []
        for job_id in dict.fromkeys(job_ids):
            if job_id in located:
                groups.setdefault(located[job_id].index, []).append(job_id)
            else:
                unknown.append(job_id)
        return [(self.shards[index], ids) for index, ids in groups.items()], unknown

    def holding(self, job_id: str) -> Shard:
        """The shard holding ``job_id``; ``JobNotFound`` when none does."""
        shard = self.locate(job_id)
        if shard is None:
            raise JobNotFound(f"job {job_id} is not known")
        return shard

    def for_batch(self, batch_id: str) -> Shard:
        """The shard of a batch: the one that recorded it, else its key's (a new batch).

        Another shard that cannot be reached is passed over: a batch is found on its key's
        shard unless the shard list changed since it was recorded.
        """
        if len(self.shards) == 1:
            return self.shards[0]
        if batch_id in self._batches:  # a batch never moves
            return self.shards[self._batches[batch_id]]
        home = self.for_key(batch_id)
        for shard in [home, *(shard for shard in self.shards if shard is not home)]:
            try:
                if shard.jobs.batches.exists(batch_id):
                    with self._lock:
                        self._batches[batch_id] = shard.index
                    return shard
            except redis.RedisError:
                if shard is home:
                    raise  # where a new batch would go: nothing to do without it
        return home
