#!/usr/bin/env python3
"""Checks what the schema validation of deploy/k8s/ cannot: that the manifests fit together and
fit Ravel-rs.

- every Service and PodDisruptionBudget selects pods that some StatefulSet makes;
- every StatefulSet names a headless Service, is Parallel, claims its data volume, and each
  of its containers has resource requests and limits;
- every replica pod starts `ravel_node start` with `--http` on the port its readiness (/readyz),
  startup and liveness (/livez) probes use, and every admin pod likewise with the admin's
  `--http`;
- seed pods (and only they) pass -l, and replica pods wait for every seed before they start, so
  that all clusters exist when the admin places them;
- one budget covers every replica pod with maxUnavailable 1.

Usage: check_k8s_manifests.py DIR (default deploy/k8s). Prints each check; exits 1 on the first
failure.
"""

import pathlib
import sys

import yaml

passed = 0


def check(ok, what):
    global passed
    if not ok:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)
    passed += 1
    print(f"ok: {what}")


def load(directory):
    objects = []
    for path in sorted(pathlib.Path(directory).glob("*.yaml")):
        objects += [o for o in yaml.safe_load_all(path.read_text()) if o]
    return objects


def selects(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


def flag_value(args, flag):
    """The argument after `flag` in `args`, or None."""
    return args[args.index(flag) + 1] if flag in args else None


def port_number(container, name_or_number):
    if isinstance(name_or_number, int):
        return name_or_number
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    return ports.get(name_or_number)


def check_probes(name, container):
    args = container["args"]
    http = flag_value(args, "--http")
    check(http is not None, f"{name}: {args[0]} is started with --http")
    http_port = int(http.rsplit(":", 1)[1])
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/livez"),
                        ("startupProbe", "/livez")):
        get = container.get(probe, {}).get("httpGet", {})
        check(get.get("path") == path, f"{name}: {probe} is httpGet {path}")
        check(port_number(container, get.get("port")) == http_port,
              f"{name}: {probe} uses the --http port {http_port}")


def check_statefulset(sts, services):
    name = sts["metadata"]["name"]
    spec = sts["spec"]
    labels = spec["template"]["metadata"]["labels"]
    check(selects(spec["selector"]["matchLabels"], labels),
          f"{name}: its selector matches its pod template")
    check(spec.get("podManagementPolicy") == "Parallel", f"{name}: podManagementPolicy Parallel")
    governing = services.get(spec["serviceName"])
    check(governing is not None and governing["spec"].get("clusterIP") == "None",
          f"{name}: serviceName {spec['serviceName']} is a headless Service")
    check(governing["spec"].get("publishNotReadyAddresses") is True,
          f"{name}: its headless Service publishes not-ready pods (peers dial them early)")
    claims = {c["metadata"]["name"] for c in spec.get("volumeClaimTemplates", [])}
    pod = spec["template"]["spec"]
    for c in pod.get("initContainers", []) + pod["containers"]:
        res = c.get("resources", {})
        check("requests" in res and "limits" in res, f"{name}/{c['name']}: resource requests and limits")
    for c in pod["containers"]:
        mounts = {m["name"] for m in c.get("volumeMounts", [])}
        check(bool(mounts & claims), f"{name}/{c['name']}: data on a volumeClaimTemplate")
        check_probes(f"{name}/{c['name']}", c)


def main():
    directory = sys.argv[1] if len(sys.argv) > 1 else "deploy/k8s"
    objects = load(directory)
    by_kind = {}
    for o in objects:
        by_kind.setdefault(o["kind"], []).append(o)
    services = {s["metadata"]["name"]: s for s in by_kind.get("Service", [])}
    statefulsets = {s["metadata"]["name"]: s for s in by_kind.get("StatefulSet", [])}
    pod_labels = [s["spec"]["template"]["metadata"]["labels"] for s in statefulsets.values()]

    for svc in services.values():
        sel = svc["spec"]["selector"]
        check(any(selects(sel, l) for l in pod_labels), f"Service {svc['metadata']['name']} selects pods")
    for sts in statefulsets.values():
        check_statefulset(sts, services)

    replica_sets = [s for s in statefulsets.values()
                    if s["spec"]["template"]["spec"]["containers"][0]["args"][0] == "/ravel_node"]
    seeds = [s for s in replica_sets if "-l" in s["spec"]["template"]["spec"]["containers"][0]["args"]]
    members = [s for s in replica_sets if s not in seeds]
    check(len(seeds) == 1 and len(members) == 1, "one seed StatefulSet (-l) and one member StatefulSet")
    seed, member = seeds[0], members[0]
    seed_name, clusters = seed["metadata"]["name"], seed["spec"]["replicas"]
    check(member["spec"]["replicas"] == 2 * clusters,
          f"{clusters} clusters of 3: {clusters} seeds and {2 * clusters} members")
    waits = " ".join(" ".join(c["args"]) for c in member["spec"]["template"]["spec"].get("initContainers", []))
    for i in range(clusters):
        check(f"//{seed_name}-{i}.{seed['spec']['serviceName']}:" in waits,
              f"member pods wait for seed {seed_name}-{i} before registering")

    budgets = by_kind.get("PodDisruptionBudget", [])
    replica_labels = [s["spec"]["template"]["metadata"]["labels"] for s in replica_sets]
    covering = [b for b in budgets
                if all(selects(b["spec"]["selector"]["matchLabels"], l) for l in replica_labels)]
    check(len(covering) == 1 and covering[0]["spec"].get("maxUnavailable") == 1,
          "one PodDisruptionBudget with maxUnavailable 1 covers every replica pod")
    print(f"{passed} manifest checks passed")


if __name__ == "__main__":
    main()
