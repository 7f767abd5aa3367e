// Declares the `loom` cfg so `--cfg loom` builds (the model-checking tests in
// `tests/loom.rs`) do not trip the `unexpected_cfgs` lint.
fn main() {
    println!("cargo::rustc-check-cfg=cfg(loom)");
}
