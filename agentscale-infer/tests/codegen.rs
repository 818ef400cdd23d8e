//! Keeps the committed generated code in step with `proto/inference.proto`.
//!
//! Compiles the proto with protox (pure Rust: no `protoc` needed) and
//! tonic-prost-build, and compares the output with `src/pb/inference.rs`.
//! Run with `AGENTSCALE_REGEN=1` to rewrite the committed file.

use std::path::PathBuf;

#[test]
fn generated_code_is_up_to_date() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let fds =
        protox::compile([root.join("proto/inference.proto")], [root.join("proto")]).expect("proto compiles");
    let out = tempfile_dir();
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .bytes(".inference")
        .out_dir(&out)
        .compile_fds(fds)
        .expect("code generation");
    let generated = std::fs::read_to_string(out.join("inference.rs")).expect("generated file");
    let committed_path = root.join("src/pb/inference.rs");
    let committed = std::fs::read_to_string(&committed_path).unwrap_or_default();
    std::fs::remove_dir_all(&out).ok();
    if std::env::var("AGENTSCALE_REGEN").as_deref() == Ok("1") {
        std::fs::write(&committed_path, &generated).expect("write generated code");
        return;
    }
    assert!(
        committed == generated,
        "src/pb/inference.rs is stale: run `AGENTSCALE_REGEN=1 cargo test -p agentscale-infer --test codegen`"
    );
}

fn tempfile_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("agentscale-infer-codegen-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}
