//! Inputs the fuzzer (fuzz/run.sh) found to crash the compiler, replayed: each must now end in
//! a result or a typed error, as the fuzz target demands.
use mambalrp::onnx::io::decode_model;
use mambalrp::reroll::ScanForm;
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
        // The fuzz target's option variants.
        let variants = [
            ("mambalrp", ScanForm::Rolled, true),
            ("gi", ScanForm::Rolled, false),
            ("mambalrp", ScanForm::Unrolled, false),
        ];
        for (rules, scan, dynamic) in variants {
            let options = Options {
                rules: rules.parse().unwrap(),
                emit_embedding: true,
                emit_layers: true,
                scan,
                dynamic_sequence: dynamic,
                dynamic_batch: dynamic,
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
