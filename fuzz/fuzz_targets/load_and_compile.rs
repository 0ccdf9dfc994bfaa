//! Fuzz target: any bytes through decoding, graph construction and compilation must end in a
//! result or a typed error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mambalrp::onnx::io::decode_model;

include!("../compile_variants.rs");

fuzz_target!(|data: &[u8]| {
    let Ok(model) = decode_model(data, std::path::Path::new("fuzz.onnx")) else { return };
    let _ = compile_every_variant(&model);
});
