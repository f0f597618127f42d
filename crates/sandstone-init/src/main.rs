//! The `sandstone-init` binary: everything is in the library.

fn main() {
    sandstone_init::run();
}
