//! Inputs the fuzzer (fuzz/run.sh) found to crash the compiler, replayed: each must now end in
//! a result or a typed error, as the fuzz target demands.
use mambalrp::onnx::io::decode_model;
use mambalrp::{compile, Options};

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
        for rules in ["mambalrp", "gi"] {
            let options = Options {
                rules: rules.parse().unwrap(),
                emit_embedding: true,
                emit_layers: true,
                ..Options::default()
            };
            match compile(&model, &options) {
                Ok(_) => println!("{}: compiles with {rules}", path.display()),
                Err(e) => println!("{}: {rules}: {e}", path.display()),
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
