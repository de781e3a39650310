"""Requests/s and latency of one registered model served by fabric and by `mlflow models serve`, same load.

    python bench/serve_classical.py [--clients 16] [--seconds 20]

Registers a fabric tabular model (a linear classifier over the 30 breast-cancer features, as `train_tabular`
logs it) in a throw-away MLflow store, then serves it two ways, one after the other on loopback:

* mlflow: `mlflow models serve -m models:/NAME/1 --env-manager local` (its uvicorn scoring server);
* fabric, gateway placement: `fabric serve` with the model loaded in the Ray Serve gateway's process
  (``placement: gateway``, what configs/serve/tabular.yaml uses), dynamic batching, API key checked, inference
  log on, on an embedded Ray with 2 CPUs;
* fabric, replicas placement: the same with the model in its own deployment (``placement: replicas``, one more
  hop per request; what scales out and takes GPUs).

Each gets the same closed loop: ``--clients`` concurrent clients (asyncio + httpx, in this process), each
sending a 1-row `dataframe_split` body to `/invocations` and waiting for the answer before the next, for
``--seconds`` after a short warm-up. The load generator shares the machine's CPUs with the server in both runs.
Prints requests/s, p50 and p99 of each and the ratios (``rps_ratio`` and ``p99_ratio`` for the gateway
placement); the last line is one JSON object. Target: fabric at least 1.5x MLflow's requests/s with a p99 no
worse.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HOME = tempfile.mkdtemp(prefix="fabric-bench-serve-")
os.environ["FABRIC_HOME"] = HOME
os.environ.pop("MLFLOW_TRACKING_URI", None)
KEY = "bench-key"
MODEL = "bench-bc"
TARGET_RATIO = 1.5


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def register_model() -> tuple[str, dict]:
    """A fabric linear classifier on breast cancer, registered as version 1; returns the version and one request."""
    import mlflow

    from fabric.runtime import setup_mlflow
    from fabric.tabular.sample import register_linear
    from workloads.ingest_sklearn import load_frame

    setup_mlflow()
    frame = load_frame("breast_cancer")
    version = register_linear(frame, MODEL, steps=100, input_example=True)
    mlflow.MlflowClient().set_registered_model_alias(MODEL, "champion", version)
    features = [c for c in frame.columns if c != "label"]
    body = {"dataframe_split": {"columns": features, "data": [frame[features].iloc[0].tolist()]}}
    return version, body


async def closed_loop(url: str, body: dict, clients: int, seconds: float, warmup: float = 3.0) -> dict:
    """``clients`` clients sending ``body`` back to back; latencies of the requests after the warm-up."""
    import httpx

    latencies: list[float] = []
    errors = 0
    payload = json.dumps(body).encode()
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"}
    start = time.perf_counter()
    measure_from, stop_at = start + warmup, start + warmup + seconds

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal errors
        while (now := time.perf_counter()) < stop_at:
            response = await http.post(url, content=payload, headers=headers)
            done = time.perf_counter()
            if now >= measure_from:
                if response.status_code == 200:
                    latencies.append(done - now)
                else:
                    errors += 1

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    latencies.sort()
    return {
        "requests": len(latencies), "errors": errors, "rps": len(latencies) / seconds,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
    }


def wait_http(url: str, proc: subprocess.Popen | None = None, timeout: float = 180) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        time.sleep(1)
    raise RuntimeError(f"{url} did not come up")


def run_mlflow(version: str, body: dict, args: argparse.Namespace) -> dict:
    import mlflow

    port = free_port()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri()}
    log = open(Path(HOME) / "mlflow-serve.log", "w")
    command = [str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m", f"models:/{MODEL}/{version}",
               "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]
    proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/ping", proc)
        return asyncio.run(closed_loop(f"http://127.0.0.1:{port}/invocations", body, args.clients, args.seconds))
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()


def run_fabric(body: dict, args: argparse.Namespace, placement: str) -> dict:
    from ray import serve

    from fabric.runtime import RayConfig, init_ray
    from fabric.serve.app import build_app
    from fabric.serve.config import ServeConfig

    port = free_port()
    os.environ["FABRIC_API_KEYS"] = f"{KEY}:predict"
    init_ray(RayConfig(num_cpus=2), log_to_driver=False)
    cfg = ServeConfig.from_dict({"name": "bench", "port": port,
                                 "models": [{"name": MODEL, "num_cpus": 0.5, "placement": placement}]})
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(cfg), name="bench", route_prefix="/")
    try:
        wait_http(f"http://127.0.0.1:{port}/v2/health/ready")
        return asyncio.run(closed_loop(f"http://127.0.0.1:{port}/invocations", body, args.clients, args.seconds))
    finally:
        serve.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16, help="concurrent closed-loop clients")
    parser.add_argument("--seconds", type=float, default=20, help="measured seconds per server")
    args = parser.parse_args()
    try:
        version, body = register_model()
        results = {"mlflow": run_mlflow(version, body, args), "fabric": run_fabric(body, args, "gateway"),
                   "fabric_replicas": run_fabric(body, args, "replicas")}
    finally:
        import ray

        ray.shutdown()
        shutil.rmtree(HOME, ignore_errors=True)
    mlflow_r, fabric_r, replicas_r = results["mlflow"], results["fabric"], results["fabric_replicas"]
    ratio = fabric_r["rps"] / mlflow_r["rps"]
    print(f"{args.clients} closed-loop clients, {args.seconds:.0f} s each, 1-row /invocations, on loopback")
    print(f"{'server':<28}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}")
    for name, r in (("mlflow models serve", mlflow_r), ("fabric serve, gateway", fabric_r),
                    ("fabric serve, replicas", replicas_r)):
        print(f"{name:<28}{r['rps']:>9.1f}{r['p50_ms']:>9.1f}{r['p99_ms']:>9.1f}{r['errors']:>8}")
    print(f"target: fabric at least {TARGET_RATIO}x MLflow's requests/s with a p99 no worse")
    print(json.dumps({
        "bench": "serve_classical", "clients": args.clients, "seconds": args.seconds,
        "mlflow_rps": round(mlflow_r["rps"], 1), "mlflow_p50_ms": round(mlflow_r["p50_ms"], 1),
        "mlflow_p99_ms": round(mlflow_r["p99_ms"], 1), "fabric_rps": round(fabric_r["rps"], 1),
        "fabric_p50_ms": round(fabric_r["p50_ms"], 1), "fabric_p99_ms": round(fabric_r["p99_ms"], 1),
        "rps_ratio": round(ratio, 3), "p99_ratio": round(fabric_r["p99_ms"] / mlflow_r["p99_ms"], 3),
        "replicas_rps": round(replicas_r["rps"], 1), "replicas_p99_ms": round(replicas_r["p99_ms"], 1),
        "replicas_rps_ratio": round(replicas_r["rps"] / mlflow_r["rps"], 3),
        "errors": mlflow_r["errors"] + fabric_r["errors"] + replicas_r["errors"], "target_ratio": TARGET_RATIO,
        "meets_target": ratio >= TARGET_RATIO and fabric_r["p99_ms"] <= mlflow_r["p99_ms"],
    }))


if __name__ == "__main__":
    main()
