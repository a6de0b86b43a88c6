#!/usr/bin/env python3
"""Two pods on a CNI bridge through containerd's CRI (runtime.v1 gRPC).

usage: cni_test.py SOCKET IMAGE LOGDIR GENDIR HOSTNS
Runs two pods with runtime handler `husk` on the CNI network containerd is
configured with; pod 1 serves a line on port 8080 (busybox nc), pod 2 and
the CNI host side (network namespace HOSTNS, where containerd runs) connect
to pod 1's IP and get it; localhost:8080 in pod 1's network namespace on
the host (what containerd dials for kubectl port-forward) gets it too. Then
stops and removes both pods. Prints `ok: ...`
lines; exits non-zero on the first failure.
"""
import json
import subprocess
import sys
import time

sock, image, logdir, gendir, hostns = sys.argv[1:6]

from crilib import T, connect, fail, ok  # noqa: E402

pb, rt = connect(sock, gendir)


pods = []


def pod(name, script):
    cfg = pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name=name, uid="uid-" + name, namespace="default", attempt=0),
        log_directory=logdir,
    )
    pid = rt.RunPodSandbox(pb.RunPodSandboxRequest(config=cfg, runtime_handler="husk"), timeout=T).pod_sandbox_id
    pods.append(pid)
    st = rt.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pid), timeout=T).status
    ip = st.network.ip
    if not ip:
        fail(f"{name} has no IP from CNI")
    ok(f"RunPodSandbox {name}: {ip}")
    c = pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name="c", attempt=0),
        image=pb.ImageSpec(image=image),
        command=["sh", "-c", script],
        log_path=f"{name}.log",
    )
    cid = rt.CreateContainer(pb.CreateContainerRequest(pod_sandbox_id=pid, config=c, sandbox_config=cfg), timeout=T).container_id
    rt.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=T)
    ok(f"container of {name} started")
    return ip, cid


def sync(cid, cmd):
    r = rt.ExecSync(pb.ExecSyncRequest(container_id=cid, cmd=["sh", "-c", cmd], timeout=60), timeout=T)
    return r.exit_code, r.stdout.decode(), r.stderr.decode()


ip1, c1 = pod("husk-net-1", "exec nc -ll -p 8080 -e echo from-pod1")
ip2, c2 = pod("husk-net-2", "exec sleep 100000")
code, out, _ = sync(c1, "ip -4 addr show eth0")
if f"inet {ip1}/" not in out:
    fail(f"pod 1's eth0 lacks {ip1}: {out!r}")
ok(f"pod 1's guest eth0 has {ip1}")

got = ""
for _ in range(30):
    code, got, err = sync(c2, f"nc -w 5 {ip1} 8080 </dev/null")
    if "from-pod1" in got:
        break
    time.sleep(1)
if "from-pod1" not in got:
    fail(f"pod 2 -> pod 1: got {got!r} (exit {code}, {err!r})")
ok(f"pod 2 ({ip2}) connected to pod 1 ({ip1}) and got the answer")

for _ in range(10):
    r = subprocess.run(["nsenter", "--net=" + hostns, "busybox", "nc", "-w", "5", ip1, "8080"],
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
    if b"from-pod1" in r.stdout:
        break
    time.sleep(1)
if b"from-pod1" not in r.stdout:
    fail(f"bridge side -> pod 1: {r.stdout!r} {r.stderr!r}")
ok("the CNI bridge's namespace reaches pod 1")

# kubectl port-forward: containerd dials localhost:PORT inside the pod's
# network namespace on the host; the shim leads that into the guest.
info = rt.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pods[0], verbose=True), timeout=T).info
spec = json.loads(info["info"])["runtimeSpec"]
netns = next(n["path"] for n in spec["linux"]["namespaces"] if n["type"] == "network")
for _ in range(10):
    r = subprocess.run(["nsenter", "--net=" + netns, "busybox", "nc", "-w", "5", "127.0.0.1", "8080"],
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
    if b"from-pod1" in r.stdout:
        break
    time.sleep(1)
if b"from-pod1" not in r.stdout:
    fail(f"localhost:8080 in pod 1's namespace on the host: {r.stdout!r} {r.stderr!r}")
ok("localhost:8080 in pod 1's network namespace on the host reaches the guest (port-forward)")

for p in pods:
    rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=p), timeout=T)
    rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=p), timeout=T)
ok("both pods stopped and removed")
left = rt.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=T).items
if left:
    fail(f"pods left: {len(left)}")
