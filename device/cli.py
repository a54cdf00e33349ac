"""`faceprobe-agent`: run a probe plan on this board offline (`run`), time models here (`bench`) or serve
jobs over HTTP (`serve`)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from . import console
from .console import non_negative_float, non_negative_int, port_number, positive_float, positive_int
from .private import check_secret_file

TOKEN_ENV = "FACEPROBE_AGENT_TOKEN"

EXAMPLES = {
    "": """faceprobe-agent serve --store ~/store --token-file ~/.token --host 0.0.0.0 --tls-self-signed
faceprobe-agent run model.int8.probe.tflite plan.json --out result
faceprobe-agent bench model.int8.tflite model.float32.tflite""",
    "serve": """faceprobe-agent serve --store ~/faceprobe-store            # loopback only, no token
faceprobe-agent serve --host 0.0.0.0 --store ~/store --token-file ~/.token --tls-self-signed
faceprobe-agent serve --host 0.0.0.0 --store ~/store --token-file ~/.token --tls-cert c.pem --tls-key k""",
    "run": """faceprobe-agent run model.int8.probe.tflite plan.json --out result
faceprobe-agent run model.int8.probe.tflite plan.json --kind activations --out acts --json""",
    "bench": """faceprobe-agent bench model.int8.tflite model.float32.tflite
faceprobe-agent bench model.int8.tflite --batch 1,8 --rounds 500 --threads 4 --json
faceprobe-agent bench model.int8.tflite --benchmark-model ./benchmark_model""",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="faceprobe-agent",
                                     description="Board side of faceprobe: numpy + a LiteRT interpreter.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="serve uploads and probe jobs over HTTP(S)",
                           description="Serve the HTTP agent. Without a token it only listens on loopback; "
                                       "beyond loopback it needs TLS (or --insecure). The store is the "
                                       "agent's private state: a store with links, another owner or "
                                       "folders others may write is refused.")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=port_number, default=8765, help="port (0 picks a free one)")
    serve.add_argument("--store", required=True, help="folder of the content-addressed model store")
    tok = serve.add_mutually_exclusive_group()
    tok.add_argument("--token", help=f"bearer token (visible in `ps`: prefer --token-file or ${TOKEN_ENV})")
    tok.add_argument("--token-file", help="file holding the bearer token")
    serve.add_argument("--max-upload-mb", type=positive_float, default=256.0, help="request body limit")
    serve.add_argument("--job-timeout", type=positive_float, default=1800.0,
                       help="seconds a job may run before it is stopped")
    serve.add_argument("--queue-cap", type=positive_int, default=16,
                       help="jobs that may wait per model; more are answered 429")
    serve.add_argument("--max-connections", type=positive_int, default=32,
                       help="connections served at once; more are answered 503")
    serve.add_argument("--min-free-mib", type=non_negative_float, default=None,
                       help="free space the store keeps: uploads and jobs that would go below it are "
                            "answered 507 (default: a job's largest result, 128 MiB)")
    serve.add_argument("--benchmark-model", metavar="PATH", default=None,
                       help="TFLite's benchmark_model binary: bench jobs add its per-op-type profile")
    tls = serve.add_argument_group("TLS (needed beyond loopback)")
    tls.add_argument("--tls-cert", help="PEM certificate to serve HTTPS with (with --tls-key)")
    tls.add_argument("--tls-key", help="its PEM private key (mode 0600)")
    tls.add_argument("--tls-self-signed", action="store_true",
                     help="serve HTTPS with a self-signed pair made with openssl on first start and kept in "
                          "the store; its fingerprint is printed at start")
    tls.add_argument("--insecure", action="store_true",
                     help="listen beyond loopback over plain HTTP (the token crosses the network in clear)")
    _runtime_args(serve)

    run = sub.add_parser("run", help="run a probe plan on a model here, without a server",
                         description="Run PLAN (plan JSON with its sibling .npz) on MODEL.tflite.")
    run.add_argument("model", help="the probe model .tflite (its .manifest.json beside it)")
    run.add_argument("plan", help="plan JSON written by ProbePlan.save (images in the sibling .npz)")
    run.add_argument("--out", required=True, help="output folder for the result")
    run.add_argument("--kind", choices=("ascent", "activations"), default="ascent",
                     help="ascent: the plan's gradient ascent by finite differences on this interpreter; "
                          "activations: the plan's start images' tap activations (dequantised) with "
                          "saturation statistics")
    run.add_argument("--manifest", help="manifest path (default: <model stem>.manifest.json)")
    run.add_argument("--max-batch", type=positive_int, default=64, help="largest interpreter batch")
    run.add_argument("--json", action="store_true", help="print the result summary as JSON")
    _runtime_args(run)

    bench = sub.add_parser(
        "bench", help="time models on this board and measure their memory",
        description="Time MODEL files interleaved, round by round, in the sandboxed child and interpreter "
                    "configuration the agent runs checks in: warm-up, then timed invocations at each batch "
                    "size on inputs drawn over the manifest's input range; min / median / p90 latency, the "
                    "file's size and the memory it costs (peak RSS of its child over an empty child).")
    bench.add_argument("models", nargs="+", metavar="MODEL", help=".tflite files (manifests beside them)")
    bench.add_argument("--rounds", type=positive_int, default=200,
                       help="timed invocations per file and batch size")
    bench.add_argument("--warmup", type=non_negative_int, default=10, help="untimed invocations first")
    bench.add_argument("--batch", type=batch_sizes, default=(1,), metavar="B[,B...]",
                       help="batch sizes to time (default 1)")
    bench.add_argument("--max-seconds", type=positive_float, default=120.0,
                       help="stop timing after this long, with the rounds done so far")
    bench.add_argument("--benchmark-model", metavar="PATH", default=None,
                       help="TFLite's benchmark_model binary: add its per-op-type profile of each file")
    bench.add_argument("--json", action="store_true", help="print the result as JSON")
    _runtime_args(bench)
    return parser


def batch_sizes(text: str) -> tuple[int, ...]:
    """An argparse type: comma-separated positive batch sizes."""
    try:
        sizes = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"must be positive integers separated by commas, got {text!r}")
    return sizes


def _runtime_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=positive_int, default=None,
                   help="interpreter threads (default: the runtime's)")
    p.add_argument("--kernels", choices=("xnnpack", "builtin", "reference"), default="xnnpack",
                   help="op kernels (int8 results differ between them; recorded in every result)")


def _token(args: argparse.Namespace) -> str | None:
    if args.token_file:
        path = Path(args.token_file)
        if not path.is_file():
            raise ValueError(f"token file {path} does not exist")
        check_secret_file(path, "token file")
        return path.read_text().strip()
    return args.token or os.environ.get(TOKEN_ENV) or None


def _tls(args: argparse.Namespace):
    """The TLS files of ``serve``'s options, or None for plain HTTP."""
    from .tls import TLSFiles

    if args.tls_self_signed:
        if args.tls_cert or args.tls_key:
            raise ValueError("pass either --tls-self-signed or --tls-cert and --tls-key, not both")
        return TLSFiles()
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ValueError("--tls-cert and --tls-key go together: pass the certificate and its private key")
    return TLSFiles(Path(args.tls_cert), Path(args.tls_key)) if args.tls_cert else None


def _run(args: argparse.Namespace) -> int:
    from . import tasks
    from .plan import ProbePlan
    from .runtime import Runtime

    runtime = Runtime(args.model, args.manifest, threads=args.threads, kernels=args.kernels)
    if not runtime.taps:
        probe = Path(args.model).name.replace(".tflite", ".probe.tflite")
        raise ValueError(f"{args.model} has no taps (a deploy model: embedding only); run plans on the probe "
                         f"model `faceprobe export` writes beside it, {probe}")
    result = tasks.run(runtime, ProbePlan.load(args.plan), args.kind, max_batch=args.max_batch)
    out = tasks.save(result, args.out)
    if args.json:
        summary = (result.summary() if args.kind == "ascent"
                   else {"stats": result["stats"], "meta": result["meta"]})
        print(json.dumps(summary, indent=2))
    else:
        print(f"{args.kind} result written to {out}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from .bench import BenchSpec, Sandboxing, local_files, run_bench, table
    from .tasks import JobLimits

    limits = JobLimits()
    files = local_files(args.models)
    spec = BenchSpec(rounds=args.rounds, warmup=args.warmup, batch_sizes=args.batch, threads=args.threads,
                     max_seconds=args.max_seconds)
    memory = [limits.model_memory_bytes + limits.job_memory_bytes] * len(files)
    result = run_bench(files, spec, args.threads, args.kernels, None,
                       Sandboxing(memory, limits.job_timeout_s), args.benchmark_model)
    print(json.dumps(result, indent=2) if args.json else table({"this board": result}))
    return 0


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "bench":
        return _bench(args)
    if args.command == "serve":
        from .agent import serve

        serve(args.host, args.port, args.store, _token(args), args.max_upload_mb, args.threads, args.kernels,
              args.job_timeout, args.queue_cap, args.max_connections, tls=_tls(args), insecure=args.insecure,
              min_free_mib=args.min_free_mib, benchmark_model=args.benchmark_model)
        console.raise_if_interrupted()  # the server stops on Ctrl-C: say so, exit 130
        return 0
    return _run(args)


def _interrupt_hint(args: argparse.Namespace) -> str:
    if args.command == "serve":
        return f"stopped serving; the store {args.store} is kept"
    if args.command == "bench":
        return "nothing was written; run the same command again"
    return f"nothing was written to {args.out}; run the same command again"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    console.finish_parser(parser, console.package_version(), EXAMPLES)
    return console.run_cli("faceprobe-agent", parser, argv, _dispatch, command_attrs=("command",),
                           interrupt_hint=_interrupt_hint, own=[Path(__file__).parent])


if __name__ == "__main__":
    sys.exit(main())
