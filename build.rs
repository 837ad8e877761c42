//! Records where a project-local ONNX Runtime (installed by `scripts/install-ort.sh` into `.ort/lib`)
//! would live, so a `cargo build` binary finds it without any environment variable.
fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    println!("cargo:rustc-env=DPOIMG_BUILD_ORT_DIR={dir}/.ort/lib");
    println!("cargo:rerun-if-changed=build.rs");
}
