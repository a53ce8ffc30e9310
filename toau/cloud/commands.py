"""The `toau serve` and `toau send` subcommands.

`register(commands)` adds both to the argparse subparsers of the `toau` command. Run
`python -m toau.cloud.commands serve|send ...` to use them without the main command.
"""

import argparse
import json
import logging
import sys

from toau.cli import positive_int

# Heavy modules (torch, FastAPI) are imported inside the handlers, so `toau --help` stays fast.
DEFAULT_HOST = "127.0.0.1"  # loopback: the service is reachable from this machine only
DEFAULT_PORT = 8000
DEFAULT_TOKENIZER = "build/tokenizer"
DEFAULT_LLM = "smollm2-135m-instruct"  # toau.cloud.llm.SMOLLM2
DEFAULT_URL = f"http://{DEFAULT_HOST}:{DEFAULT_PORT}"
EXIT_REJECTED = 2


LIMIT_OPTIONS = ("max_body_bytes", "max_indices", "max_new_tokens", "request_timeout_s", "max_queue", "max_batch",
                 "batch_window_s")


def _limits(args: argparse.Namespace):
    from toau.cloud.service import ServiceLimits

    options = {name: getattr(args, name) for name in LIMIT_OPTIONS if getattr(args, name) is not None}
    return ServiceLimits(**options)


def _serve(args: argparse.Namespace) -> int:
    import torch

    from toau.cloud.server import create_app, serve
    from toau.cloud.service import load_bundle

    if args.threads:
        torch.set_num_threads(args.threads)
    projector = None if args.projector == "none" else args.projector
    bundle = load_bundle(args.tokenizer, projector, args.llm, seed=args.seed, tokens_per=args.tokens_per)
    serve(create_app(bundle, _limits(args)), args.host, args.port, access_log=args.access_log)
    return 0


def _format_timings(timings: dict) -> str:
    return ", ".join(f"{name} {value:.1f}" for name, value in timings.items())


def _send(args: argparse.Namespace) -> int:
    import httpx
    import torch

    from toau.edge.client import ServiceRejected, send_file

    if not args.url.startswith(("http://", "https://")):
        raise ValueError(f"--url {args.url} has no scheme; write http://{args.url}")
    torch.set_num_threads(args.threads)
    try:
        reply = send_file(
            args.url, args.input, args.question,
            choices=args.choice, max_new_tokens=args.max_new_tokens, tokenizer=args.tokenizer,
            stream=args.stream, timeout_s=args.timeout,
        )
    except ServiceRejected as error:
        request = f" {error.request_id}" if error.request_id else ""
        hint = "; --url takes the server's base address, e.g. http://127.0.0.1:8000" if error.status == 404 else ""
        print(f"toau send: the server rejected the request{request}: {error}{hint}", file=sys.stderr)
        return EXIT_REJECTED
    except httpx.TimeoutException as error:
        print(f"toau send: no reply from {args.url} within --timeout {args.timeout} s ({error}); "
              f"the server may be busy, so raise --timeout", file=sys.stderr)
        return EXIT_REJECTED
    except httpx.TransportError as error:
        print(f"toau send: could not reach {args.url} ({error}); is `toau serve` running?", file=sys.stderr)
        return EXIT_REJECTED

    if args.json:
        print(json.dumps({"response": reply.body, "request_bytes": reply.request_bytes,
                          "payload_bytes": reply.payload_bytes, "client_timings_ms": reply.timings_ms,
                          "edge": reply.edge}, indent=2))
        return 0
    if args.choice:
        best = reply.body["choice"]
        print(f"choice {best}: {args.choice[best]} (scores {[round(s, 3) for s in reply.body['scores']]})")
    else:
        print(reply.body["answer"])
    print(f"sent {reply.payload_bytes} packet bytes in a {reply.request_bytes}-byte HTTP request")
    print(f"server ms: {_format_timings(reply.server_timings_ms)}")
    print(f"client ms: {_format_timings(reply.timings_ms)}")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    """Add the `serve` and `send` subcommands to the subparsers of the `toau` command."""
    serve = commands.add_parser("serve", help="serve the cloud model over HTTP (loopback by default)")
    serve.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default: {DEFAULT_HOST})")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"TCP port, 0 picks a free one (default: {DEFAULT_PORT})")
    serve.add_argument("--tokenizer", default=DEFAULT_TOKENIZER,
                       help="tokenizer folder; 'random' is an untrained VQ-VAE with the params.yaml architecture, "
                       f"'tiny' one of width 16 (default: {DEFAULT_TOKENIZER})")
    serve.add_argument("--projector", default="none",
                       help="trained projector folder; 'none' uses an untrained one, for timing only (default: none)")
    serve.add_argument("--tokens-per", choices=["frame", "index"], default="frame",
                       help="motion tokens of the untrained projector: one per frame or per index (default: frame)")
    serve.add_argument("--llm", default=DEFAULT_LLM,
                       help="language model: smollm2-135m-instruct, a .gguf file, a model folder, a cached hub id, "
                       f"or 'tiny' for a random 2-layer Llama (default: {DEFAULT_LLM})")
    serve.add_argument("--seed", type=int, default=0, help="seed of untrained and tiny models (default: 0)")
    serve.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    limits = serve.add_argument_group("limits", "each defaults to the field of the same name in toau.cloud.service.ServiceLimits")
    limits.add_argument("--max-body-bytes", type=int, help="largest request body in bytes")
    limits.add_argument("--max-indices", type=int, help="max codebook indices per packet (4 frames each)")
    limits.add_argument("--max-new-tokens", type=int, help="max generated tokens per answer")
    limits.add_argument("--request-timeout-s", type=float, help="seconds from a request's arrival to its response")
    limits.add_argument("--max-queue", type=int, help="requests waiting for the model before new ones get 503")
    limits.add_argument("--max-batch", type=int, help="requests per batched generate call")
    limits.add_argument("--batch-window-s", type=float, help="seconds the worker waits for more requests to batch")
    serve.add_argument("--access-log", action="store_true", help="log every request (uvicorn's access log)")
    serve.set_defaults(handler=_serve)

    send = commands.add_parser("send", help="send a packet or a video to the cloud service and print the answer")
    send.add_argument("input", help="packet file written by `toau encode`, or a video for the edge pipeline")
    send.add_argument("--url", default=DEFAULT_URL, help=f"service URL (default: {DEFAULT_URL})")
    send.add_argument("--question", required=True, help="question about the motion")
    send.add_argument("--choice", action="append", default=None,
                      help="one answer choice; repeat for a multiple-choice question (scored, not generated)")
    send.add_argument("--max-new-tokens", type=int, default=None, help="max generated tokens (default: the server's limit)")
    send.add_argument("--tokenizer", default=DEFAULT_TOKENIZER,
                      help=f"tokenizer folder for video input (default: {DEFAULT_TOKENIZER})")
    send.add_argument("--stream", action="store_true",
                      help="for video input, feed the frames one at a time through the streaming edge pipeline")
    send.add_argument("--threads", type=positive_int, default=1,
                      help="torch CPU threads of the edge tokenizer for video input (default: 1)")
    send.add_argument("--timeout", type=float, default=120.0, help="client timeout in seconds (default: 120)")
    send.add_argument("--json", action="store_true", help="print the whole response and timings as JSON")
    send.set_defaults(handler=_send)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="toau", description=__doc__)
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.handler(args)
    except (FileNotFoundError, ValueError) as error:
        print(f"toau {args.command}: error: {error}", file=sys.stderr)
        return EXIT_REJECTED


if __name__ == "__main__":
    sys.exit(main())
