//! Fuzz target: any bytes through decoding, graph construction and compilation must end in a
//! result or a typed error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mambalrp::onnx::io::decode_model;
use mambalrp::reroll::ScanForm;
use mambalrp::{compile, Options};

fuzz_target!(|data: &[u8]| {
    let Ok(model) = decode_model(data, std::path::Path::new("fuzz.onnx")) else { return };
    let variants = [("mambalrp", ScanForm::Rolled, true), ("gi", ScanForm::Rolled, false), ("mambalrp", ScanForm::Unrolled, false)];
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
        let _ = compile(&model, &options);
    }
});
