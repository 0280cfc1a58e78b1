"""``pgt``: the command line of the training agent.

    pgt train [CONFIG] [--data FILE] [--set key=value ...] [--backend URL ...] [--device cpu|gpu]
              [--run-dir DIR] [--name NAME] [--quiet]
    pgt resume RUN_DIR [--set key=value ...] [--backend URL ...] [--from step-N] [--quiet]
    pgt logs RUN_DIR [--follow] [--event NAME ...]
    pgt eval RUN_DIR
    pgt emulate [--pty | --tcp PORT] [--host ADDR] [--latency-ms MS] [--baud BAUD]
    pgt plot RUN_DIR [--out FILE]
    pgt report [--quick] [--out DIR] [--jobs N] [--seeds N ...] [--address ADDR]
    pgt sweep SPEC.toml [--out DIR] [--max-concurrent N] [--address ADDR] [--quiet]

Errors a person can act on (configuration, run directory, checkpoint, data, device)
are handled once, here: one line on stderr starting with ``pgt: `` and exit status 2
for usage and configuration mistakes, 1 for the others, 3 when the run diverged, 75
when no device was in service for ``reservoir.suspend_limit_s``, 130 when
interrupted (a second stop signal, or one during start-up).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

__all__ = ["main"]

EXIT_DIVERGED, EXIT_SUSPENDED = 3, 75


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``pgt`` command; return the process exit status."""
    restore = _terminate_as_interrupt()
    try:
        return _main(argv)
    except KeyboardInterrupt:   # a signal before the run's own handling (start-up)
        print("pgt: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:     # `pgt logs RUN | head`: the reader has gone
        _quiet_stdout()
        return 0
    finally:
        restore()


def _main(argv: Sequence[str] | None) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # --help, or a usage error argparse already printed
        return e.code if isinstance(e.code, int) else 2
    if args.handler in (_train, _resume):
        _pin_blas_threads()
    from pgt._checkpoint import CheckpointError
    from pgt._config import ConfigError
    from pgt._runloop import RunDirError, RunDiverged, RunInterrupted, SuspendLimitReached

    code = 0
    try:
        code = args.handler(args)
    except* BrokenPipeError:   # `pgt logs RUN | head`: the reader has gone
        _quiet_stdout()
    except* ConfigError as group:
        code = _fail(group, 2)
    except* RunDiverged as group:
        code = _fail(group, EXIT_DIVERGED)
    except* SuspendLimitReached as group:
        code = _fail(group, EXIT_SUSPENDED)
    except* (RunDirError, CheckpointError, OSError, *_backend_errors()) as group:
        code = _fail(group, 1)
    except* (RunInterrupted, KeyboardInterrupt) as group:
        code = _fail(group, 130)
    return code


def _terminate_as_interrupt():
    """SIGTERM before a run handles signals itself is Ctrl-C: one line, exit 130. (A
    running run installs its own handlers and checkpoints; this only covers start-up
    and shut-down.) Returns the undo."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.signal(signal.SIGTERM,
                             lambda *_: os.kill(os.getpid(), signal.SIGINT))
    return lambda: signal.signal(signal.SIGTERM, previous)


def _pin_blas_threads() -> None:
    """One BLAS thread, as pgt report's workers have: the layers' small products run
    several times faster on a 2-core machine without thread hand-offs, to the same bits.
    OPENBLAS_NUM_THREADS (or OMP_/MKL_) set by the caller wins."""
    if any(v in os.environ for v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                                     "MKL_NUM_THREADS")):
        return
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"   # for a NumPy not imported yet
    if "numpy" in sys.modules:   # already loaded (main called from Python)
        from threadpoolctl import threadpool_limits

        threadpool_limits(1, user_api="blas")


def _quiet_stdout() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def _train(args: argparse.Namespace) -> int:
    import trio

    from pgt._config import load_config
    from pgt._progress import Progress
    from pgt._runloop import train_new

    backends = args.backend or []
    flags = {"reservoir.url": backends[0] if len(backends) == 1 else None,
             "reservoir.urls": backends if len(backends) > 1 else None,
             "device": args.device, "run_dir": args.run_dir, "run_name": args.name,
             "data.path": args.data}
    cfg = load_config(args.config, args.set,
                      settings={k: v for k, v in flags.items() if v is not None})
    trio.run(partial(train_new, cfg, progress=Progress(quiet=args.quiet)))
    return 0


def _resume(args: argparse.Namespace) -> int:
    import trio

    from pgt._progress import Progress
    from pgt._runloop import resume_config, run_training

    run_dir = Path(args.run_dir)
    backends = args.backend or []
    flags = {"reservoir.url": backends[0] if len(backends) == 1 else None,
             "reservoir.urls": backends if len(backends) > 1 else ([] if backends else None)}
    cfg, changes = resume_config(run_dir, args.set,
                                 {k: v for k, v in flags.items() if v is not None})
    trio.run(partial(run_training, cfg, run_dir, resume=True, start=args.start,
                     changes=changes, progress=Progress(quiet=args.quiet)))
    return 0


def _eval(args: argparse.Namespace) -> int:
    import trio

    from pgt._progress import metric_text
    from pgt._runloop import evaluate_run

    result = trio.run(evaluate_run, Path(args.run_dir))
    regression = result.get("task") == "regression"
    what = "test" if regression else "test accuracy"
    print(f"{what} {metric_text(result)}, test loss {result['test_loss']:.4f} "
          f"(step {result['step']}, {result['checkpoint']})")
    best = result.get("best")
    if best:
        validation = metric_text({"task": result.get("task"), **best}, prefix="val_")
        print(f"best validation ({validation}): {what} {metric_text({'task': result.get('task'), **best})}"
              f", test loss {best['test_loss']:.4f} (step {best['step']}, {best['checkpoint']})")
    for name, accuracy, n in result.get("per_class", ()):
        print(f"  class {name}: {100 * accuracy:.1f}% of {n}")
    return 0


def _logs(args: argparse.Namespace) -> int:
    import trio

    from pgt._lock import held_by
    from pgt._logging import EVENTS_FILE, dedupe, follow_events, read_events, render_event
    from pgt._runloop import RunDirError

    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"no run directory at {run_dir}")
    path = run_dir / EVENTS_FILE

    def emit(event: dict[str, Any]) -> None:
        if not args.event or event.get("event") in args.event:
            print(render_event(event), flush=True)

    if not args.follow and not path.is_file():
        raise RunDirError(f"no {EVENTS_FILE} in {run_dir}")
    # Each step once, however many resumes ran it again.
    for event in dedupe(read_events(path)) if path.is_file() else ():
        emit(event)
    if args.follow:
        seen = sum(1 for _ in read_events(path)) if path.is_file() else 0
        skipped = iter(range(seen))

        def follow(event: dict[str, Any]) -> None:
            if next(skipped, None) is None:   # past what was shown above
                emit(event)

        try:
            trio.run(partial(follow_events, path, follow,
                             alive=lambda: held_by(run_dir) is not None))
        except* KeyboardInterrupt:
            pass  # Ctrl-C is how a person stops following
    return 0


def _emulate(args: argparse.Namespace) -> int:
    import trio

    from pgt._config import ConfigError
    from pgt.backends import EmulatorConfig, FaultSpec, emulate
    from pgt.kernels import RingParams

    for flag, value, low in (("--inputs", args.inputs, 1), ("--nodes", args.nodes, 1),
                             ("--max-batch", args.max_batch, 1), ("--latency-ms", args.latency_ms, 0),
                             ("--baud", args.baud, 0), ("--noise", args.noise, 0),
                             ("--drift", args.drift, 0)):
        if not low <= value < float("inf"):
            raise ConfigError(f"emulate: {flag} must be at least {low}, got {value!r}")
    if args.tcp is not None and not 0 <= args.tcp <= 65535:
        raise ConfigError(f"emulate: --tcp {args.tcp} is not a TCP port (0-65535)")
    try:
        config = EmulatorConfig(
            ring=RingParams(nodes=args.nodes, noise=args.noise, drift=args.drift),
            n_inputs=args.inputs, max_batch=args.max_batch, latency_s=args.latency_ms / 1000,
            baud=args.baud, seed=args.seed, faults=FaultSpec.parse(args.faults))
    except ValueError as e:
        raise ConfigError(f"emulate: {e}") from None
    try:
        trio.run(partial(emulate, config, tcp_port=args.tcp, host=args.host, link=args.link,
                         announce=lambda line: print(line, flush=True)))
    except* KeyboardInterrupt:
        pass  # Ctrl-C is how a person stops the emulator
    return 0


def _plot(args: argparse.Namespace) -> int:
    from pgt._plot import plot_run

    print(plot_run(Path(args.run_dir), Path(args.out) if args.out else None))
    return 0


def _report(args: argparse.Namespace) -> int:
    from pgt._config import ConfigError
    from pgt._report import run_report

    if args.jobs < 1:
        raise ConfigError(f"report: --jobs must be at least 1, got {args.jobs}")
    if any(s < 0 for s in args.seeds):
        raise ConfigError(f"report: seeds must not be negative, got {args.seeds}")
    result = run_report(Path(args.out), quick=args.quick, seeds=tuple(args.seeds), jobs=args.jobs,
                        address=args.address)
    print(result["text"])
    print(f"report: {result['report']} ({result['wall_seconds'] / 60:.1f} min)")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from pgt._config import ConfigError
    from pgt._sweep import run_sweep

    if args.max_concurrent < 0:
        raise ConfigError(f"sweep: --max-concurrent must not be negative, got {args.max_concurrent}")
    done = []

    def on_result(name: str, result: dict[str, Any]) -> None:
        if args.quiet:
            return
        done.append(name)
        if result.get("error"):
            print(f"trial {name}: failed", flush=True)
            return
        metric = next((k for k in ("val_accuracy", "val_nmse") if k in result), None)
        value = result.get(metric)
        shown = (f"{100 * value:.2f} %" if metric == "val_accuracy" else f"{value:.4g}") \
            if isinstance(value, (int, float)) else "?"
        print(f"trial {name}: {metric} {shown} ({result.get('how', '')}, "
              f"{result.get('wall_s', 0):.0f} s)", flush=True)

    result = run_sweep(args.spec, args.out, max_concurrent=args.max_concurrent,
                       address=args.address, on_result=on_result)
    out = result["out"]
    print(result["table"])
    best = f", best configuration {out / 'best.toml'}" if result["best"] else ""
    print(f"sweep: {out / 'sweep.md'}, {out / 'sweep.csv'}{best} "
          f"({result['wall_s']:.0f} s)")
    return 1 if any("error" in r for r in result["rows"]) else 0


def _fail(group: BaseExceptionGroup, code: int) -> int:
    """Print the first error of a group as one line; return the exit status."""
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    text = str(error).splitlines()[0] if str(error).strip() else type(error).__name__
    if isinstance(error, KeyboardInterrupt):
        text = "interrupted"
    print(f"pgt: {text}", file=sys.stderr)
    return code


def _backend_errors() -> tuple[type[BaseException], ...]:
    """Errors of the devices, the array library and the data: one line, exit 1."""
    from pgt._data import DataError
    from pgt.backends import ReservoirError
    from pgt.kernels import DeviceError

    return (ReservoirError, DeviceError, DataError)


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage mistake as one line (``pgt: ...``) and exit status 2."""

    def error(self, message: str):
        command = self.prog.removeprefix("pgt").strip()
        hint = f"pgt {command} --help" if command else "pgt --help"
        self.exit(2, f"pgt: {message} (see {hint})\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="pgt", description="Train networks with a physical reservoir inside, "
        "forward-only (perturbative gradient training).")
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND",
                                     parser_class=_Parser)

    train = commands.add_parser("train", help="start a run")
    train.add_argument("config", nargs="?", metavar="CONFIG", help="TOML config file")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key, e.g. --set estimator.k=8")
    train.add_argument("--backend", metavar="URL", action="append",
                       help="reservoir URL (reservoir.url); repeat it to train on several "
                       "rings at once (reservoir.urls)")
    train.add_argument("--data", metavar="FILE", help="train on a .csv or .npz file of your "
                       "own (data.path; see README, 'Your own data')")
    train.add_argument("--device", choices=("cpu", "gpu"), help="array device")
    train.add_argument("--run-dir", metavar="DIR", help="parent folder of runs (run_dir)")
    train.add_argument("--name", metavar="NAME", help="run directory name (run_name)")
    train.add_argument("--quiet", action="store_true", help="only the result line")
    train.set_defaults(handler=_train)

    resume = commands.add_parser("resume", help="continue a run from its checkpoint")
    resume.add_argument("run_dir", metavar="RUN_DIR")
    resume.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="change a setting that does not change what the run computed, "
                        "e.g. --set train.steps=6000")
    resume.add_argument("--backend", metavar="URL", action="append",
                        help="the same ring(s) at a new address (reservoir.url/urls)")
    resume.add_argument("--from", dest="start", metavar="step-N",
                        help="resume from this checkpoint (default: the newest valid one)")
    resume.add_argument("--quiet", action="store_true", help="only the result line")
    resume.set_defaults(handler=_resume)

    logs = commands.add_parser("logs", help="show a run's events")
    logs.add_argument("run_dir", metavar="RUN_DIR")
    logs.add_argument("--follow", "-f", action="store_true",
                      help="keep showing new events until the run stops")
    logs.add_argument("--event", action="append", metavar="NAME",
                      help="only events of this name (repeatable)")
    logs.set_defaults(handler=_logs)

    evaluate = commands.add_parser("eval", help="test accuracy of the latest checkpoint")
    evaluate.add_argument("run_dir", metavar="RUN_DIR")
    evaluate.set_defaults(handler=_eval)

    emulate = commands.add_parser("emulate", help="run an emulated microcontroller with the "
                                  "simulated ring behind it")
    link = emulate.add_mutually_exclusive_group()
    link.add_argument("--pty", action="store_true", help="serve on a new pty (the default)")
    link.add_argument("--tcp", type=int, metavar="PORT", help="serve on a TCP port (0: any)")
    emulate.add_argument("--host", default="127.0.0.1", help="TCP address (default: loopback)")
    emulate.add_argument("--link", metavar="PATH", help="keep a symlink to the current pty here "
                         "(stable across an unplug)")
    emulate.add_argument("--latency-ms", type=float, default=0.0, help="firmware time per FORWARD")
    emulate.add_argument("--baud", type=float, default=0.0,
                         help="link byte rate to model, e.g. 115200 or 12e6 (default: unlimited)")
    emulate.add_argument("--noise", type=float, default=0.0, help="detector noise (relative)")
    emulate.add_argument("--drift", type=float, default=0.0, help="slow gain drift (relative)")
    emulate.add_argument("--faults", default="", metavar="SPEC",
                         help="e.g. corrupt=0.01,reset_every=500,unplug_at=2000 (see FaultSpec)")
    emulate.add_argument("--inputs", type=int, default=16, help="input steps per sample")
    emulate.add_argument("--nodes", type=int, default=24, help="virtual nodes of the ring")
    emulate.add_argument("--max-batch", type=int, default=64, help="samples per FORWARD")
    emulate.add_argument("--seed", type=int, default=0, help="seeds the detector noise")
    emulate.set_defaults(handler=_emulate)

    plot = commands.add_parser("plot", help="draw a run's curves into a PNG")
    plot.add_argument("run_dir", metavar="RUN_DIR")
    plot.add_argument("--out", metavar="FILE", help="PNG path (default RUN_DIR/curves.png)")
    plot.set_defaults(handler=_plot)

    report = commands.add_parser("report", help="compare estimators on both models "
                                 "(markdown table and PNG curves)")
    report.add_argument("--quick", action="store_true", help="a few steps per run (smoke test)")
    report.add_argument("--out", default="report", metavar="DIR",
                        help="folder of the report and its runs (default ./report)")
    report.add_argument("--jobs", type=int, default=2, metavar="N", help="parallel processes")
    report.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], metavar="N")
    report.add_argument("--address", metavar="ADDR", help="run on this Ray cluster "
                        "(default: RAY_ADDRESS, else this machine)")
    report.set_defaults(handler=_report)

    sweep = commands.add_parser("sweep", help="a grid or a search of runs, on Ray Tune "
                                "(see README, 'Sweeps')")
    sweep.add_argument("spec", metavar="SPEC.toml", help="[base], and [grid] or [search]")
    sweep.add_argument("--out", metavar="DIR", help="folder of the sweep and its runs "
                       "(default ./sweeps/<spec name>)")
    sweep.add_argument("--max-concurrent", type=int, default=0, metavar="N",
                       help="trials at a time (default: as many as the cluster has CPUs)")
    sweep.add_argument("--address", metavar="ADDR", help="join this Ray cluster "
                       "(default: RAY_ADDRESS, else Ray in-process on this machine)")
    sweep.add_argument("--quiet", action="store_true", help="only the table")
    sweep.set_defaults(handler=_sweep)
    return parser
