//! Fuzz target: any bytes through decoding, graph construction and compilation must end in a
//! result or a typed error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mambalrp::onnx::io::decode_model;
use mambalrp::{compile, Options};

fuzz_target!(|data: &[u8]| {
    let Ok(model) = decode_model(data, std::path::Path::new("fuzz.onnx")) else { return };
    for rules in ["mambalrp", "gi"] {
        let options = Options { rules: rules.parse().unwrap(), emit_embedding: true, emit_layers: true, ..Options::default() };
        let _ = compile(&model, &options);
    }
});
