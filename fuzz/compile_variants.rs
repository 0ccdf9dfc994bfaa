// The option variants the fuzz target compiles every decodable input with. Included by the fuzz
// target and by tests/fuzz_regressions.rs, so the regression replay runs exactly what crashed.
fn compile_every_variant(model: &mambalrp::onnx::proto::ModelProto) -> Vec<mambalrp::Result<mambalrp::Compiled>> {
    use mambalrp::reroll::ScanForm;
    let variants = [
        ("mambalrp", ScanForm::Rolled, true),
        ("gi", ScanForm::Rolled, false),
        ("mambalrp", ScanForm::Chunked, true),
        ("gi", ScanForm::Chunked, false),
        ("mambalrp", ScanForm::Parallel, true),
        ("mambalrp", ScanForm::Unrolled, false),
    ];
    variants
        .into_iter()
        .map(|(rules, scan, dynamic)| {
            let options = mambalrp::Options {
                rules: rules.parse().expect("known rule set"),
                emit_embedding: true,
                emit_layers: true,
                scan,
                dynamic_sequence: dynamic,
                dynamic_batch: dynamic,
                ..mambalrp::Options::default()
            };
            mambalrp::compile(model, &options)
        })
        .collect()
}
