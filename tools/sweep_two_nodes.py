"""A two-node Ray cluster on this machine, and a sweep whose ring lives on one node.

    python tools/sweep_two_nodes.py [--out DIR] [--port PORT]

Starts a head node (``ray start --head``, 1 CPU) and a second node with the custom
resource ``ring_a`` (``ray start --address ... --resources '{"ring_a": 1}'``), as a
lab would on the PC a ring is plugged into; then runs ``pgt sweep --address`` on a
grid of four trials, two of which set ``reservoir.requires = "ring_a"``. Prints each
node's id and resources, and the node every trial ran on; exits 1 when a trial that
requires ``ring_a`` ran anywhere but the ``ring_a`` node. Stops the cluster at the end.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SPEC = """
[base]
train.steps = 60
train.eval_every = 30
reservoir.url = "sim://ring?nodes=8"

[grid]
"reservoir.requires" = ["", "ring_a"]
"optimizer.lr" = [0.01, 0.03]
"""


def _ray(*args: str, env: dict) -> None:
    subprocess.run([str(Path(sys.executable).with_name("ray")), *args], check=True, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _nodes(address: str, env: dict) -> list[dict]:
    """Each alive node's id and resources, read by a short Ray client of the cluster."""
    code = ("import json, ray; ray.init(address=%r, logging_level='ERROR', "
            "include_dashboard=False); print(json.dumps([{'id': n['NodeID'], "
            "'resources': n['Resources']} for n in ray.nodes() if n['Alive']]))" % address)
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="sweep folder (default: a temporary one)")
    parser.add_argument("--port", type=int, default=6391, help="the head node's port")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pgt-two-nodes-"))
    out = Path(args.out) if args.out else work / "sweep"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "OPENBLAS_NUM_THREADS": "1"}
    address = f"127.0.0.1:{args.port}"
    try:
        _ray("start", "--head", f"--port={args.port}", "--node-ip-address=127.0.0.1",
             "--num-cpus=1", "--include-dashboard=false", "--disable-usage-stats", env=env)
        _ray("start", f"--address={address}", "--node-ip-address=127.0.0.1", "--num-cpus=1",
             '--resources={"ring_a": 1}', "--disable-usage-stats", env=env)
        nodes = _nodes(address, env)
        print("| node id | resources |\n|---|---|")
        for node in nodes:
            shown = {k: v for k, v in node["resources"].items()
                     if k == "CPU" or not k.startswith(("node:", "memory", "object_store"))}
            print(f"| {node['id'][:12]} | {json.dumps(shown, sort_keys=True)} |")
        ring_nodes = {n["id"] for n in nodes if "ring_a" in n["resources"]}
        spec = work / "two_nodes.toml"
        spec.write_text(SPEC)
        done = subprocess.run([sys.executable, "-m", "pgt", "sweep", str(spec), "--out", str(out),
                               "--address", address, "--quiet"], env=env, capture_output=True,
                              text=True)
        if done.returncode:
            print(done.stderr.strip(), file=sys.stderr)
            return 1
        rows = list(csv.DictReader((out / "sweep.csv").open()))
        print("\n| trial | reservoir.requires | ran on node |\n|---|---|---|")
        wrong = 0
        for row in sorted(rows, key=lambda r: r["trial"]):
            needs = row["reservoir.requires"]
            wrong += bool(needs) and row["node_id"] not in ring_nodes
            print(f"| {row['trial']} | {needs or '(none)'} | {row['node_id'][:12]} |")
        print(f"\n{len(nodes)} nodes; trials requiring ring_a on the ring_a node: "
              f"{sum(1 for r in rows if r['reservoir.requires']) - wrong} of "
              f"{sum(1 for r in rows if r['reservoir.requires'])}")
        return 1 if wrong or len(nodes) != 2 else 0
    finally:
        _ray("stop", "--force", env=env)
        shutil.rmtree(work, ignore_errors=True) if not args.out else None


if __name__ == "__main__":
    sys.exit(main())
