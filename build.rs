//! Records where a project-local ONNX Runtime (installed by `scripts/install-ort.sh` into `.ort/lib`)
//! would live, so a `cargo build` binary finds it without any environment variable; and generates
//! the C header `include/dpoimg.h` from `src/ffi/` with cbindgen (the header is committed, and
//! `scripts/test-c.sh` fails when a build changes it, so a changed ABI is always a visible diff).
use std::path::{Path, PathBuf};

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    println!("cargo:rustc-env=DPOIMG_BUILD_ORT_DIR={dir}/.ort/lib");
    println!("cargo:rerun-if-changed=build.rs");
    generate_header(Path::new(&dir));
}

/// The version macros cbindgen cannot compute (it only copies literal constants), from Cargo.toml.
fn version_macros() -> String {
    let v = |k: &str| std::env::var(k).expect("cargo sets the package version");
    let (major, minor, patch) = (
        v("CARGO_PKG_VERSION_MAJOR"),
        v("CARGO_PKG_VERSION_MINOR"),
        v("CARGO_PKG_VERSION_PATCH"),
    );
    let number = major.parse::<u64>().unwrap_or(0) * 1_000_000
        + minor.parse::<u64>().unwrap_or(0) * 1_000
        + patch.parse::<u64>().unwrap_or(0);
    format!(
        "\n/* Version of this header, from Cargo.toml; dpoimg_version() and dpoimg_version_number()\n   \
         give the library's. */\n\
         #define DPOIMG_VERSION_MAJOR {major}\n\
         #define DPOIMG_VERSION_MINOR {minor}\n\
         #define DPOIMG_VERSION_PATCH {patch}\n\
         #define DPOIMG_VERSION_STRING \"{}\"\n\
         #define DPOIMG_VERSION_NUMBER {number}\n",
        v("CARGO_PKG_VERSION")
    )
}

fn generate_header(root: &Path) {
    let config_path = root.join("cbindgen.toml");
    println!("cargo:rerun-if-changed={}", config_path.display());
    println!("cargo:rerun-if-changed={}", root.join("src/ffi").display());
    let mut config = cbindgen::Config::from_file(&config_path).expect("cbindgen.toml parses");
    config.after_includes = Some(version_macros());
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(root.join("src/ffi/mod.rs"))
        .generate()
        .expect("cbindgen generates include/dpoimg.h from src/ffi");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("dpoimg.h");
    bindings.write_to_file(&out);
    // Rewrite the committed header only in a source checkout (not in `cargo package`'s
    // verification build, which must leave its sources alone), only when it changes, and
    // atomically: parallel builds (clippy, test, the C test script) may run this at once.
    if !root.join(".git").exists() {
        return;
    }
    let target = root.join("include/dpoimg.h");
    let text = std::fs::read_to_string(&out).expect("generated header readable");
    let new = parenthesize_negative_macros(&text);
    std::fs::write(&out, &new).expect("OUT_DIR is writable");
    let new = new.into_bytes();
    if std::fs::read(&target).ok().as_deref() != Some(new.as_slice()) {
        std::fs::create_dir_all(root.join("include")).expect("include/ can be created");
        let tmp = root.join(format!("include/.dpoimg.h.{}", std::process::id()));
        std::fs::write(&tmp, &new).expect("include/ is writable");
        std::fs::rename(&tmp, &target).expect("include/dpoimg.h can be replaced");
    }
}

/// `#define DPOIMG_ERR_X -3` → `#define DPOIMG_ERR_X (-3)`, so a macro is one expression wherever
/// it is expanded (cbindgen copies the literal as is).
fn parenthesize_negative_macros(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 64);
    for line in text.split_inclusive('\n') {
        let body = line.trim_end_matches('\n');
        let mut parts = body.splitn(3, ' ');
        match (parts.next(), parts.next(), parts.next()) {
            (Some("#define"), Some(name), Some(value))
                if value.starts_with('-') && value[1..].bytes().all(|b| b.is_ascii_digit()) =>
            {
                out.push_str(&format!("#define {name} ({value})"));
                out.push_str(&line[body.len()..]);
            }
            _ => out.push_str(line),
        }
    }
    out
}
