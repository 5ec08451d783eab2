"""Producer commands: ``zq generate|edit|refine|status|get|cancel``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from common.errors import InvalidJob, JobFailed
from common.status import JobRecord, JobStatus
from producer.client import Client

EXIT_OK, EXIT_JOB_FAILED, EXIT_USAGE = 0, 1, 2


def add_commands(commands: Any) -> None:
    """Register the producer subcommands on an argparse subparsers object."""
    from producer.adapters_cli import add_command as adapters_command
    from producer.batch_cli import add_command as batch_command
    from producer.campaign_cli import add_commands as campaign_commands

    generate = commands.add_parser("generate", help="text to image (turbo by default)")
    generate.add_argument("prompt")
    _job_options(generate)
    generate.set_defaults(handler=_generate)

    edit = commands.add_parser("edit", help="edit a parent job's image or a source image")
    edit.add_argument("prompt", help="the instruction")
    source = edit.add_mutually_exclusive_group(required=True)
    source.add_argument("--parent", help="job id whose image to edit")
    source.add_argument("--image", help="local image file or storage key to edit")
    edit.add_argument("--mask", help="mask image (white = may change): file or storage key")
    edit.add_argument("--strength", type=float, help="how much may change, 0-1")
    _job_options(edit)
    edit.set_defaults(handler=_edit)

    refine = commands.add_parser("refine", help="high-quality redraw on the base model")
    source = refine.add_mutually_exclusive_group(required=True)
    source.add_argument("--parent", help="job id whose image to redraw")
    source.add_argument("--image", help="local image file or storage key to redraw")
    refine.add_argument("--prompt", help="defaults to the parent's prompt")
    refine.add_argument("--strength", type=float, help="how much may change, 0-1")
    _job_options(refine)
    refine.set_defaults(handler=_refine)

    for name, handler, text in (
            ("status", _status, "show a job; without one, the queues, workers and dead letters"),
            ("cancel", _cancel, "cancel a queued or running job")):
        command = commands.add_parser(name, help=text)
        command.add_argument("job_id", nargs="?" if name == "status" else None)
        _output_options(command)
        command.set_defaults(handler=handler)

    replay = commands.add_parser(
        "replay", help="re-run a finished job from its manifest; exit 0 if byte-identical")
    replay.add_argument("job_id")
    replay.add_argument("--timeout", type=float, default=3600.0)
    replay.add_argument("--json", action="store_true", help="print JSON")
    replay.set_defaults(handler=_replay)

    get = commands.add_parser("get", help="fetch a finished job's image")
    get.add_argument("job_id")
    get.add_argument("-o", "--output", type=Path, help="write the image here")
    get.add_argument("--url", action="store_true", help="print a presigned URL instead")
    _output_options(get)
    get.set_defaults(handler=_get)
    batch_command(commands)
    campaign_commands(commands)
    adapters_command(commands)


def _job_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="auto", help="auto, turbo, edit or base")
    parser.add_argument("--job-id", help="idempotency key: the same id is submitted once")
    parser.add_argument("--conversation", dest="conversation_id")
    parser.add_argument("--negative-prompt")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--width", type=int)
    parser.add_argument("--height", type=int)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--guidance", type=float)
    parser.add_argument("--priority", type=int, help="0-9, 9 most urgent (default 5)")
    parser.add_argument("--format", dest="output_format", help="png, webp or jpeg")
    parser.add_argument("--quality", type=int, help="1-100 for jpeg and webp (default 90)")
    parser.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--adapter", dest="adapters", action="append", default=[],
                        metavar="NAME[:WEIGHT]", help="a registered LoRA adapter (zq adapters)")
    parser.add_argument("--webhook", help="URL to POST the job's record to when it ends")
    _output_options(parser)


def _output_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--wait", action="store_true", help="wait until the job ends")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds for --wait")
    parser.add_argument("--json", action="store_true", help="print JSON")


def _options(args: argparse.Namespace) -> dict[str, Any]:
    names = ("model", "job_id", "conversation_id", "negative_prompt", "seed", "width", "height",
             "steps", "guidance", "priority", "output_format", "quality", "strength", "webhook")
    options = {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}
    tags = {}
    for pair in args.tag:
        key, sep, value = pair.partition("=")
        if not sep:
            raise InvalidJob("--tag", "expected KEY=VALUE", pair)
        tags[key] = value
    if tags:
        options["tags"] = tags
    if args.adapters:
        options["adapters"] = args.adapters
    return options


def _generate(client: Client, args: argparse.Namespace) -> int:
    return _follow(client, client.generate(args.prompt, **_options(args)).job_id, args)


def _edit(client: Client, args: argparse.Namespace) -> int:
    handle = client.edit(args.prompt, parent=args.parent, image=args.image, mask=args.mask,
                         **_options(args))
    return _follow(client, handle.job_id, args)


def _refine(client: Client, args: argparse.Namespace) -> int:
    handle = client.refine(parent=args.parent, prompt=args.prompt, image=args.image,
                           **_options(args))
    return _follow(client, handle.job_id, args)


def _status(client: Client, args: argparse.Namespace) -> int:
    if args.job_id is None:
        from zq.overview import overview, render

        view = overview([shard.jobs.redis for shard in client.shards], client.settings.key_prefix)
        print(json.dumps(view) if args.json else render(view))
        return EXIT_OK
    return _follow(client, args.job_id, args)


def _cancel(client: Client, args: argparse.Namespace) -> int:
    client.cancel(args.job_id)
    return _follow(client, args.job_id, args)


def _get(client: Client, args: argparse.Namespace) -> int:
    record = client.wait(args.job_id, args.timeout) if args.wait else client.status(args.job_id)
    if record.status is not JobStatus.SUCCEEDED:
        _print(record, client, args)
        return EXIT_JOB_FAILED
    if args.url:
        print(client.url(args.job_id))
        return EXIT_OK
    data = client.result(args.job_id)
    output = args.output or Path(Path(record.image or "image.png").name)
    output.write_bytes(data)
    if args.json:
        print(json.dumps({**record.to_public(), "output": str(output)}))
    else:
        print(f"{args.job_id}: wrote {output} ({len(data)} bytes)")
    return EXIT_OK


def _replay(client: Client, args: argparse.Namespace) -> int:
    from producer.replay import replay

    result = replay(client, args.job_id, args.timeout)
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        verdict = "byte-identical" if result.identical else "DIFFERENT"
        revision = ("same model revision" if result.same_revision else
                    f"model revision {result.original_revision} -> {result.replay_revision}")
        print(f"{result.job_id} replayed as {result.replay_id}: {verdict} ({revision})")
    return EXIT_OK if result.identical else EXIT_JOB_FAILED


def _follow(client: Client, job_id: str, args: argparse.Namespace) -> int:
    record = client.wait(job_id, args.timeout) if args.wait else client.status(job_id)
    _print(record, client, args)
    failed = record.status in (JobStatus.FAILED, JobStatus.CANCELLED)
    return EXIT_JOB_FAILED if failed else EXIT_OK


def _print(record: JobRecord, client: Client, args: argparse.Namespace) -> None:
    if args.json:
        print(json.dumps(record.to_public()))
        return
    spec = record.spec
    line = f"{spec.job_id}  {record.status.value:<9}  {spec.model.value}/{spec.kind.value}"
    if record.status is JobStatus.RUNNING and record.total_steps:
        line += f"  step {record.step}/{record.total_steps}"
    if record.image:
        line += f"  {record.image}"
    if record.error:
        line += f"  error: {record.error}"
    print(line)


def run(args: argparse.Namespace) -> int:
    """Run a parsed producer command; job failures exit 1 with the reason printed."""
    client = Client.from_env()
    try:
        code: int = args.handler(client, args)
        return code
    except JobFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_JOB_FAILED
    except TimeoutError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_JOB_FAILED
