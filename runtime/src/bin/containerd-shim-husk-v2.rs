//! `containerd-shim-husk-v2`: husk's containerd runtime v2 shim
//! (`io.containerd.husk.v2`). See the README section "containerd and Kubernetes".

fn main() {
    husk_runtime::shim::main();
}
