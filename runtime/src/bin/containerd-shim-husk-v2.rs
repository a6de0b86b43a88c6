//! `containerd-shim-husk-v2`: husk's containerd runtime v2 shim
//! (`io.containerd.husk.v2`). See `runtime/SHIM.md`.

fn main() {
    husk_runtime::shim::main();
}
