//! Writes the seed corpora (`fuzz/corpus/<target>/`) made by
//! `checks::seeds` with the real encoders: `scripts/fuzz --seeds`.

#[path = "../checks.rs"]
#[allow(dead_code)]
mod checks;

fn main() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for (target, name, bytes) in checks::seeds() {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).expect("corpus dir");
        std::fs::write(dir.join(name), bytes).expect("seed");
    }
}
