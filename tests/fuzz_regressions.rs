//! Inputs the fuzzer (fuzz/run.sh) found to crash the compiler, replayed with the fuzz target's
//! own option variants: each must now end in a result or a typed error.
use mambalrp::onnx::io::decode_model;

include!("../fuzz/compile_variants.rs");

#[test]
fn fuzzer_crashes_stay_fixed() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_regressions");
    let mut replayed = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        let Ok(model) = decode_model(&bytes, &path) else {
            continue;
        };
        for result in compile_every_variant(&model) {
            match result {
                Ok(_) => println!("{}: compiles", path.display()),
                Err(e) => println!("{}: {e}", path.display()),
            }
        }
        replayed += 1;
    }
    assert!(
        replayed > 0,
        "no regression inputs found in {}",
        dir.display()
    );
}
