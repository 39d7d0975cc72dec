"""Routing overhead of pyrt on Ray Serve: the median latency a Ray endpoint adds to a request, against one
`pyrt serve` on the same model (sequential tiny requests, the two servers taking turns), what pyrt's own
routing code costs in the ingress (routing keys: template, tokenizer, block hashes) per request, and with
--floor, Ray Serve's own latency on the same cluster: an app that answers at once (one hop) and one that
calls a second deployment through a handle (two hops, as pyrt's ingress and replica).

    python bench/bench_ray_overhead.py --ray http://127.0.0.1:8302 --direct http://127.0.0.1:8301 \
        -m MODEL.gguf -n 200 --floor

Imports httpx, pyrt.server.ray.routing, and ray with --floor (it joins the running cluster: address auto).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import httpx


def _one(client: httpx.Client, url: str, body: dict) -> float:
    t0 = time.perf_counter()
    r = client.post(url + "/v1/chat/completions", json=body)
    dt = time.perf_counter() - t0
    r.raise_for_status()
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ray", required=True, help="the Ray endpoint")
    ap.add_argument("--direct", required=True, help="one pyrt serve")
    ap.add_argument("-m", "--model", required=True, help="the model file (for the ingress-side key cost)")
    ap.add_argument("-n", type=int, default=200, help="requests per server (default: 200)")
    ap.add_argument("--json", default=None, help="write the numbers here")
    ap.add_argument("--floor", action="store_true",
                    help="also measure Ray Serve's one- and two-hop latency (deploys two small apps on the cluster "
                         "of --ray, then deletes them)")
    a = ap.parse_args()

    # one request that the replica answers from its cache: 1 token generated from a cached prompt
    body = {"messages": [{"role": "system", "content": "You are brief."}, {"role": "user", "content": "Say hi."}],
            "max_tokens": 1, "temperature": 0.0}
    lat = {"ray": [], "direct": []}
    with httpx.Client(timeout=60) as c:
        for url in (a.ray, a.direct):
            for _ in range(10):
                _one(c, url, body)
        for _ in range(a.n):
            lat["ray"].append(_one(c, a.ray, body))
            lat["direct"].append(_one(c, a.direct, body))
    med = {k: statistics.median(v) * 1000 for k, v in lat.items()}

    from pyrt.server.ray.routing import Prompter, routing_keys
    pr = Prompter(a.model)
    raw = json.dumps(body).encode()
    t = []
    for _ in range(max(50, a.n)):
        t0 = time.perf_counter()
        routing_keys(pr, "/v1/chat/completions", raw, {})
        t.append(time.perf_counter() - t0)
    keys_ms = statistics.median(t) * 1000
    out = {"n": a.n, "median_ms_ray": med["ray"], "median_ms_direct": med["direct"],
           "median_added_ms": med["ray"] - med["direct"], "routing_keys_ms": keys_ms,
           "p90_ms_ray": statistics.quantiles(lat["ray"], n=10)[-1] * 1000,
           "p90_ms_direct": statistics.quantiles(lat["direct"], n=10)[-1] * 1000}
    print(f"| requests | median ms, Ray | median ms, pyrt serve | added ms (median) | p90 ms Ray | p90 ms serve "
          f"| routing keys ms |\n|---:|---:|---:|---:|---:|---:|---:|\n"
          f"| {a.n} | {med['ray']:.2f} | {med['direct']:.2f} | {out['median_added_ms']:.2f} | {out['p90_ms_ray']:.2f} "
          f"| {out['p90_ms_direct']:.2f} | {keys_ms:.3f} |")
    if a.floor:
        out.update(_floor(a.ray, a.n))
        print(f"\nRay Serve alone: one hop {out['floor_one_ms']:.2f} ms median, two hops {out['floor_two_ms']:.2f} ms "
              f"median ({a.n} GETs each)")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(out, fh, indent=1)


def _floor(url: str, n: int) -> dict:
    import ray
    from ray import serve
    from starlette.responses import JSONResponse

    ray.init(address="auto", log_to_driver=False)

    @serve.deployment(ray_actor_options={"num_cpus": 0})
    class Leaf:
        async def __call__(self, x):
            return x

    @serve.deployment(ray_actor_options={"num_cpus": 0})
    class One:
        async def __call__(self, request):
            return JSONResponse({"ok": 1})

    @serve.deployment(ray_actor_options={"num_cpus": 0})
    class Two:
        def __init__(self, leaf):
            self.leaf = leaf

        async def __call__(self, request):
            return JSONResponse({"ok": await self.leaf.remote(1)})

    serve.run(One.bind(), name="pyrt-floor-one", route_prefix="/pyrt-floor-one")
    serve.run(Two.bind(Leaf.bind()), name="pyrt-floor-two", route_prefix="/pyrt-floor-two")
    lat = {"one": [], "two": []}
    try:
        with httpx.Client(timeout=60) as c:
            for k in lat:
                for _ in range(10):
                    c.get(f"{url}/pyrt-floor-{k}").raise_for_status()
            for _ in range(n):
                for k in lat:
                    t0 = time.perf_counter()
                    c.get(f"{url}/pyrt-floor-{k}").raise_for_status()
                    lat[k].append(time.perf_counter() - t0)
    finally:
        serve.delete("pyrt-floor-one")
        serve.delete("pyrt-floor-two")
    return {f"floor_{k}_ms": statistics.median(v) * 1000 for k, v in lat.items()}


if __name__ == "__main__":
    main()
