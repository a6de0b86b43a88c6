#!/usr/bin/env python3
"""A CRI client test through containerd's socket (runtime.v1 gRPC).

usage: cri_test.py SOCKET IMAGE LOGDIR GENDIR
A pod asking for the host's network (hostNetwork) is refused. Then runs a
pod with runtime handler `husk` on containerd's CNI network (its VM in the
pod's host cgroup under its cgroup parent), two containers in it,
ExecSync, reads the container logs, UpdateContainerResources (and one past
the pod's VM, refused), then stops and removes the pod (and its host
cgroup);
then a privileged pod and container (host devices, /dev/ptmx, /sys rw);
then a pod whose container the guest's OOM killer kills at its memory limit
(exit 137, reason OOMKilled: the shim's TaskOOM).
Prints `ok: ...` lines; exits non-zero on the first failure. GENDIR holds
the generated api_pb2*.py.
"""
import os
import sys
import time

sock, image, logdir, gendir = sys.argv[1:5]

from crilib import T, connect, fail, ok  # noqa: E402

pb, rt = connect(sock, gendir)


def expect(what, got, want):
    if got != want:
        fail(f"{what}: got {got!r}, want {want!r}")
    ok(what)


v = rt.Version(pb.VersionRequest(), timeout=10)
ok(f"CRI {v.runtime_api_version} from {v.runtime_name} {v.runtime_version}")

# A VM cannot share the host's network namespace: a hostNetwork pod is
# refused at its sandbox's create (it ran with the VM's network, silently).
import grpc  # noqa: E402

host_cfg = pb.PodSandboxConfig(
    metadata=pb.PodSandboxMetadata(name="husk-hostnet", uid="uid-husk-hostnet", namespace="default", attempt=0),
    log_directory=logdir,
    linux=pb.LinuxPodSandboxConfig(
        security_context=pb.LinuxSandboxSecurityContext(
            namespace_options=pb.NamespaceOption(network=pb.NODE)
        )
    ),
)
try:
    rt.RunPodSandbox(pb.RunPodSandboxRequest(config=host_cfg, runtime_handler="husk"), timeout=T)
    fail("a hostNetwork pod was run")
except grpc.RpcError as e:
    if "linux.namespaces has no network namespace" not in (e.details() or ""):
        fail(f"a hostNetwork pod failed for another reason: {e.details()!r}")
ok("a hostNetwork pod is refused (linux.namespaces has no network namespace)")
left = rt.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=T).items
expect("the refused pod is not left", len(left), 0)

# The pod's cgroup parent (kubelet's pod cgroup, cgroupfs driver): the
# sandbox's linux.cgroupsPath is PARENT/SANDBOX-ID, and the pod's VM lives
# in that cgroup on the host.
cgroup_parent = f"/husk-cri-{os.getpid()}"
pod_cfg = pb.PodSandboxConfig(
    metadata=pb.PodSandboxMetadata(name="husk-pod", uid="uid-husk-pod", namespace="default", attempt=0),
    log_directory=logdir,
    labels={"app": "husk-test"},
    annotations={"husk.memory_mib": "320"},
    linux=pb.LinuxPodSandboxConfig(cgroup_parent=cgroup_parent),
)
pod = rt.RunPodSandbox(pb.RunPodSandboxRequest(config=pod_cfg, runtime_handler="husk"), timeout=T).pod_sandbox_id
ok(f"RunPodSandbox {pod[:12]}")


def cgroup_mounts():
    out = []
    for line in open("/proc/self/mountinfo"):
        pre, _, post = line.partition(" - ")
        if post.split(" ")[0] in ("cgroup", "cgroup2"):
            out.append(pre.split(" ")[4])
    return out


def vm_cgroups():
    """The /proc/PID/cgroup paths of every husk-vmm on the host."""
    found = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            if open(f"/proc/{d}/comm").read().strip() != "husk-vmm":
                continue
            found.append([l.rstrip("\n").split(":", 2)[2] for l in open(f"/proc/{d}/cgroup")])
        except OSError:
            pass
    return found


pod_cgroup = f"{cgroup_parent}/{pod}"
if not any(paths and all(p == pod_cgroup for p in paths) for paths in vm_cgroups()):
    fail(f"no husk-vmm in {pod_cgroup} on every hierarchy: {vm_cgroups()}")
ok(f"the pod's VM is in its host cgroup {pod_cgroup} on every hierarchy")
st = rt.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod), timeout=T).status
expect("pod ready", pb.PodSandboxState.Name(st.state), "SANDBOX_READY")
expect("pod runtime handler", st.runtime_handler, "husk")


def container(name, script):
    cfg = pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name=name, attempt=0),
        image=pb.ImageSpec(image=image),
        command=["sh", "-c", script],
        log_path=f"{name}.log",
    )
    cid = rt.CreateContainer(
        pb.CreateContainerRequest(pod_sandbox_id=pod, config=cfg, sandbox_config=pod_cfg), timeout=T
    ).container_id
    ok(f"CreateContainer {name}")
    rt.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=T)
    ok(f"StartContainer {name}")
    return cid


c1 = container("c1", "echo hello-from-c1; echo err-from-c1 >&2; exec sleep 100000")
c2 = container("c2", "echo hello-from-c2; exec sleep 100000")
for cid, name in ((c1, "c1"), (c2, "c2")):
    s = rt.ContainerStatus(pb.ContainerStatusRequest(container_id=cid), timeout=T).status
    expect(f"{name} running", pb.ContainerState.Name(s.state), "CONTAINER_RUNNING")

r = rt.ExecSync(pb.ExecSyncRequest(container_id=c1, cmd=["sh", "-c", "echo exec-out; echo exec-err >&2; exit 3"], timeout=60), timeout=T)
expect("ExecSync stdout", r.stdout, b"exec-out\n")
expect("ExecSync stderr", r.stderr, b"exec-err\n")
expect("ExecSync exit code", r.exit_code, 3)

# Each container has its own mount namespace (and cgroup) in the one VM.
def sync(cid, cmd):
    r = rt.ExecSync(pb.ExecSyncRequest(container_id=cid, cmd=["sh", "-c", cmd], timeout=60), timeout=T)
    if r.exit_code != 0:
        fail(f"exec {cmd!r}: exit {r.exit_code}, stderr {r.stderr!r}")
    return r.stdout.decode().strip()

mnt1, mnt2 = sync(c1, "readlink /proc/self/ns/mnt"), sync(c2, "readlink /proc/self/ns/mnt")
if not mnt1 or mnt1 == mnt2:
    fail(f"containers share a mount namespace: {mnt1} {mnt2}")
ok("containers have their own mount namespaces")
cg1, cg2 = sync(c1, "cat /proc/self/cgroup"), sync(c2, "cat /proc/self/cgroup")
if cg1 == cg2:
    fail(f"containers share a cgroup: {cg1}")
ok("containers have their own cgroups")
# ...in one guest kernel: the same boot id.
b1, b2 = sync(c1, "cat /proc/sys/kernel/random/boot_id"), sync(c2, "cat /proc/sys/kernel/random/boot_id")
expect("both containers in one VM (same boot_id)", b1, b2)
if b1 == open("/proc/sys/kernel/random/boot_id").read().strip():
    fail("the container runs on the host kernel")
ok("the pod's kernel is not the host's")
print("guest-meminfo:", sync(c1, "head -3 /proc/meminfo | tr -s ' ' | tr '\\n' ' '"), flush=True)


def log_of(name):
    path = os.path.join(logdir, f"{name}.log")
    for _ in range(100):
        if os.path.exists(path):
            lines = open(path).read().splitlines()
            if len(lines) >= (2 if name == "c1" else 1):
                return lines
        time.sleep(0.2)
    fail(f"no log at {path}")


l1 = log_of("c1")
# CRI log lines: TIMESTAMP STREAM TAG MESSAGE
got = sorted((l.split(" ", 3)[1], l.split(" ", 3)[3]) for l in l1)
expect("c1 logs", got, [("stderr", "err-from-c1"), ("stdout", "hello-from-c1")])
expect("c2 logs", [l.split(" ", 3)[3] for l in log_of("c2")], ["hello-from-c2"])

# UpdateContainerResources: the container's cgroup in the pod's VM gets
# the new limit; one past the VM (husk.memory_mib=320) is refused with the
# field and the VM's size, and changes nothing.
cg = "/sys/fs/cgroup$(cut -d: -f3 /proc/self/cgroup)"
rt.UpdateContainerResources(
    pb.UpdateContainerResourcesRequest(
        container_id=c1, linux=pb.LinuxContainerResources(memory_limit_in_bytes=64 << 20, cpu_shares=512)
    ),
    timeout=T,
)
expect("UpdateContainerResources: memory.max in the guest", sync(c1, f"cat {cg}/memory.max"), str(64 << 20))
expect("UpdateContainerResources: the pod's other container unchanged", sync(c2, f"cat {cg}/memory.max"), "max")
try:
    rt.UpdateContainerResources(
        pb.UpdateContainerResourcesRequest(
            container_id=c1, linux=pb.LinuxContainerResources(memory_limit_in_bytes=1 << 30)
        ),
        timeout=T,
    )
    fail("an update past the pod's VM was accepted")
except grpc.RpcError as e:
    want = "linux.resources.memory.limit \"1073741824\": asks for 1024 MiB, and the VM has 320 MiB of RAM"
    if want not in (e.details() or ""):
        fail(f"an update past the pod's VM failed for another reason: {e.details()!r}")
ok("an update past the pod's VM is refused (the VM was sized at create and cannot grow)")
expect("the refused update changed nothing", sync(c1, f"cat {cg}/memory.max"), str(64 << 20))

if os.environ.get("CRI_PAUSE_FOR_MEASURE"):
    print("measure-now", flush=True)
    while not os.path.exists(os.environ["CRI_PAUSE_FOR_MEASURE"]):
        time.sleep(0.2)

rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod), timeout=T)
ok("StopPodSandbox")
s = rt.ContainerStatus(pb.ContainerStatusRequest(container_id=c1), timeout=T).status
expect("c1 exited after the pod stopped", pb.ContainerState.Name(s.state), "CONTAINER_EXITED")
rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod), timeout=T)
ok("RemovePodSandbox")
left = rt.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=T).items
expect("no pods left", len(left), 0)
left = rt.ListContainers(pb.ListContainersRequest(), timeout=T).containers
expect("no containers left", len(left), 0)
# The shim stops the VM, and removes its cgroup, as it exits.
for _ in range(150):
    left = [m for m in cgroup_mounts() if os.path.exists(m + cgroup_parent)]
    if not left:
        break
    time.sleep(0.2)
expect("the pod's host cgroup and the parent made for it are gone", left, [])

# A privileged pod (it did not start: containerd lists every host device in
# a privileged container's spec, /dev/ptmx among them, and the agent made
# /dev/ptmx through the ptmx -> pts/ptmx link). The devices are the guest
# kernel's; the capabilities all; sysfs writable.
priv_cfg = pb.PodSandboxConfig(
    metadata=pb.PodSandboxMetadata(name="husk-priv", uid="uid-husk-priv", namespace="default", attempt=0),
    log_directory=logdir,
    linux=pb.LinuxPodSandboxConfig(security_context=pb.LinuxSandboxSecurityContext(privileged=True)),
)
ppod = rt.RunPodSandbox(pb.RunPodSandboxRequest(config=priv_cfg, runtime_handler="husk"), timeout=T).pod_sandbox_id
ok(f"RunPodSandbox (privileged) {ppod[:12]}")
pcfg = pb.ContainerConfig(
    metadata=pb.ContainerMetadata(name="priv", attempt=0),
    image=pb.ImageSpec(image=image),
    command=["sleep", "100000"],
    log_path="priv.log",
    linux=pb.LinuxContainerConfig(security_context=pb.LinuxContainerSecurityContext(privileged=True)),
)
pc = rt.CreateContainer(
    pb.CreateContainerRequest(pod_sandbox_id=ppod, config=pcfg, sandbox_config=priv_cfg), timeout=T
).container_id
rt.StartContainer(pb.StartContainerRequest(container_id=pc), timeout=T)
ok("a privileged container started")
expect("privileged: /dev/ptmx is the link to its devpts", sync(pc, "readlink /dev/ptmx"), "pts/ptmx")
expect("privileged: host devices are nodes", sync(pc, "test -c /dev/kmsg && test -c /dev/null && echo yes"), "yes")
expect("privileged: /sys is writable", sync(pc, "awk '$5 == \"/sys\" { print substr($6, 1, 2) }' /proc/self/mountinfo"), "rw")
cap_eff = sync(pc, "grep CapEff /proc/self/status").split()[-1]
if int(cap_eff, 16) & (1 << 21) == 0:
    fail(f"privileged: no CAP_SYS_ADMIN in CapEff {cap_eff}")
ok(f"privileged: CapEff {cap_eff}")
rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=ppod), timeout=T)
rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=ppod), timeout=T)
ok("the privileged pod stopped and removed")
left = rt.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=T).items
expect("no pods left", len(left), 0)

# A container over its memory limit: the guest kernel's OOM killer kills
# it; the shim publishes TaskOOM before its TaskExit, so CRI reports the
# container exited with reason OOMKilled (Kubernetes' lastState reason).
oom_cfg = pb.PodSandboxConfig(
    metadata=pb.PodSandboxMetadata(name="husk-oom", uid="uid-husk-oom", namespace="default", attempt=0),
    log_directory=logdir,
)
opod = rt.RunPodSandbox(pb.RunPodSandboxRequest(config=oom_cfg, runtime_handler="husk"), timeout=T).pod_sandbox_id
ok(f"RunPodSandbox (OOM) {opod[:12]}")
hog_cfg = pb.ContainerConfig(
    metadata=pb.ContainerMetadata(name="hog", attempt=0),
    image=pb.ImageSpec(image=image),
    # The shell holds a 100 MB string: over the 32 MiB limit.
    command=["sh", "-c", "x=$(head -c 100000000 /dev/zero | tr '\\0' a); echo survived"],
    log_path="hog.log",
    linux=pb.LinuxContainerConfig(resources=pb.LinuxContainerResources(memory_limit_in_bytes=32 << 20)),
)
hog = rt.CreateContainer(
    pb.CreateContainerRequest(pod_sandbox_id=opod, config=hog_cfg, sandbox_config=oom_cfg), timeout=T
).container_id
rt.StartContainer(pb.StartContainerRequest(container_id=hog), timeout=T)
ok("the memory hog started (memory limit 32 MiB)")
deadline = time.time() + 300
while True:
    s = rt.ContainerStatus(pb.ContainerStatusRequest(container_id=hog), timeout=T).status
    if pb.ContainerState.Name(s.state) == "CONTAINER_EXITED":
        break
    if time.time() > deadline:
        fail(f"the memory hog did not exit: {pb.ContainerState.Name(s.state)}")
    time.sleep(0.5)
expect("the memory hog's exit code", s.exit_code, 137)
expect("the memory hog's reason", s.reason, "OOMKilled")
rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=opod), timeout=T)
rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=opod), timeout=T)
ok("the OOM pod stopped and removed")
left = rt.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=T).items
expect("no pods left", len(left), 0)
