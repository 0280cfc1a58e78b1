"""A two-node Ray cluster on this machine, and a sweep whose ring trials land on the ring's node.

    python tools/sweep_two_nodes.py [--out DIR] [--seeds 3] [--steps 6]

Starts a head node (`ray start --head`, 1 CPU) and a second node (`ray start --address`,
1 CPU and the custom resource ``ring_a``), the way a lab starts one node per PC with the
PC's ring named as a resource. Then runs ``pgt sweep --address`` on a grid of
``reservoir.requires`` ("" or "ring_a") × seeds on a tiny simulated ring, and prints the
cluster's nodes with their resources and, for each trial, the node it ran on (from the
sweep's CSV, which each trial fills from Ray's runtime context). Exits 1 unless every
trial that requires ``ring_a`` ran on the node that has it, and every trial finished.

Both nodes listen on 127.0.0.1 and use token authentication with a token of their own
(a file in the cluster's temp folder); on exit only this cluster's processes are stopped (found
by its session folder), never another Ray on the machine, so no `ray stop`.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESOURCE = "ring_a"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray(env: dict[str, str], *args: str) -> None:
    ray_cli = Path(sys.executable).with_name("ray")
    command = [str(ray_cli) if ray_cli.exists() else "ray", "start", *args,
               "--disable-usage-stats"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    if done.returncode != 0:
        raise SystemExit(f"sweep_two_nodes: {' '.join(command[1:3])} failed "
                         f"({done.returncode}): {done.stderr.strip().splitlines()[-1:]}")


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a process from /proc, None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return fields[0], int(fields[1])


def _processes_under(folder: Path) -> list[int]:
    """This cluster's processes: those whose command line names its temp folder, and
    every descendant of one (Ray's agents and workers rename themselves)."""
    parent: dict[int, int] = {}
    roots: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        stat = _stat(pid)
        if stat is None:
            continue
        parent[pid] = stat[1]
        if str(folder) in cmdline and pid != os.getpid():
            roots.add(pid)
    found = set(roots)
    grew = True
    while grew:
        grew = False
        for pid, ppid in parent.items():
            if ppid in found and pid not in found and pid != os.getpid():
                found.add(pid)
                grew = True
    return sorted(found)


def _stop_cluster(folder: Path) -> None:
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        pids = _processes_under(folder)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while pids and time.monotonic() < deadline:
            pids = [p for p in pids if (_stat(p) or ("Z",))[0] != "Z"]   # gone or a zombie
            time.sleep(0.2)
        if not pids:
            return


def _nodes(address: str, env: dict[str, str]) -> list[dict]:
    """[{node_id, resources}] of the cluster, read by a driver of its own."""
    code = ("import json, ray; ray.init(address=%r, logging_level='ERROR', log_to_driver=False); "
            "print(json.dumps([{'node_id': n['NodeID'], 'resources': n['Resources']} "
            "for n in ray.nodes() if n['Alive']]))" % address)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=120, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(out: Path, seeds: int = 3, steps: int = 6) -> int:
    """Start the cluster, sweep on it, print what ran where, stop the cluster.
    0 when every ring_a trial ran on the ring_a node, 1 otherwise."""
    out.mkdir(parents=True, exist_ok=True)
    # Ray's socket paths must stay short: its temp folder lives in /tmp, not under out
    temp = Path(tempfile.mkdtemp(prefix="pgt2n-", dir="/tmp"))
    token = temp / "auth_token"
    token.write_text(secrets.token_hex(32))
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token),
           "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    port = _free_port()
    address = f"127.0.0.1:{port}"
    spec = out / "two_nodes.toml"
    spec.write_text(f"[base]\ntrain.steps = {steps}\ntrain.eval_every = {steps}\n"
                    f"train.checkpoint_every = {steps}\ndata.batch_size = 8\n"
                    f"reservoir.url = \"sim://ring?nodes=4\"\n\n[grid]\n"
                    f"\"reservoir.requires\" = [\"\", \"{RESOURCE}\"]\n"
                    f"seed = {list(range(seeds))}\n")
    try:
        _ray(env, "--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=1",
             f"--temp-dir={temp}", "--include-dashboard=false")
        _ray(env, f"--address={address}", "--node-ip-address=127.0.0.1", "--num-cpus=1",
             f"--resources={json.dumps({RESOURCE: 1})}")
        nodes = _nodes(address, env)
        start = time.perf_counter()
        sweep = subprocess.run([sys.executable, "-m", "pgt", "sweep", str(spec), "--out",
                                str(out / "sweep"), "--address", address, "--quiet"],
                               env=env, capture_output=True, text=True, timeout=900)
        wall = time.perf_counter() - start
        if sweep.returncode != 0:
            print(sweep.stderr[-3000:], file=sys.stderr)
            print(f"sweep_two_nodes: pgt sweep exited {sweep.returncode}", file=sys.stderr)
            return 1
    finally:
        _stop_cluster(temp)
        left = _processes_under(temp)
        shutil.rmtree(temp, ignore_errors=True)
        if left:
            print(f"sweep_two_nodes: processes {left} of the cluster still run", file=sys.stderr)

    ring_nodes = {n["node_id"] for n in nodes if n["resources"].get(RESOURCE)}
    print(f"cluster at {address}: {len(nodes)} nodes")
    print("\n| node id | CPU | ring_a |\n|---|---|---|")
    for n in nodes:
        print(f"| {n['node_id']} | {n['resources'].get('CPU', 0):g} "
              f"| {n['resources'].get(RESOURCE, 0):g} |")
    rows = list(csv.DictReader(io.StringIO((out / "sweep" / "sweep.csv").read_text())))
    print(f"\npgt sweep --address {address}: {len(rows)} trials, {wall:.0f} s\n")
    print("| trial | reservoir.requires | ran on node | node has ring_a |\n|---|---|---|---|")
    wrong = []
    for row in sorted(rows, key=lambda r: r["trial"]):
        on_ring = row["node_id"] in ring_nodes
        print(f"| {row['trial']} | {row['reservoir.requires'] or '-'} | {row['node_id']} "
              f"| {'yes' if on_ring else 'no'} |")
        if row.get("error") or (row["reservoir.requires"] == RESOURCE and not on_ring):
            wrong.append(row["trial"])
    if len(nodes) != 2 or len(ring_nodes) != 1 or len(rows) != 2 * seeds or wrong:
        print(f"\nFAIL: nodes {len(nodes)}, with {RESOURCE} {len(ring_nodes)}, trials "
              f"{len(rows)} of {2 * seeds}, misplaced or failed {wrong}")
        return 1
    print(f"\nevery trial requiring {RESOURCE} ran on node {next(iter(ring_nodes))}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="the sweep's folder (default: a temporary one)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per value of requires")
    parser.add_argument("--steps", type=int, default=6, help="training steps per trial")
    args = parser.parse_args()
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="pgt-two-nodes-"))
    return run(out, args.seeds, args.steps)


if __name__ == "__main__":
    sys.exit(main())
