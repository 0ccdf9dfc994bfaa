//! Runs a model in ONNX Runtime through the `ort` crate, loading the `libonnxruntime` shared
//! library that the `onnxruntime` PyPI wheel ships (found by `ORT_DYLIB_PATH`, or else in the
//! wheel installed for `python3` on the PATH).
use std::path::PathBuf;
use std::sync::OnceLock;

use ndarray::ArrayD;
use ort::environment::Environment;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::{DynValue, Tensor as OrtTensor};

use crate::error::{Error, Result};
use crate::onnx::io::encode_model;
use crate::onnx::proto::ModelProto;
use crate::onnx::Tensor;

const INSTALL_HINT: &str =
    "install ONNX Runtime with `pip install onnxruntime==1.31.1` (or run the README's test \
    command, which does), or set ORT_DYLIB_PATH to its libonnxruntime.so";

fn runtime_error(e: impl std::fmt::Display) -> Error {
    Error::Runtime {
        runtime: "onnxruntime",
        message: e.to_string(),
    }
}

/// Where the ONNX Runtime shared library is: `ORT_DYLIB_PATH`; else the `onnxruntime` wheel of
/// the active virtual environment (`VIRTUAL_ENV`); else the wheel of the `python3` on the PATH
/// (`site-packages/onnxruntime/capi/libonnxruntime.so.*`). The error lists every place tried.
pub fn ort_library_path() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("ORT_DYLIB_PATH") {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(runtime_error(format!(
                "ORT_DYLIB_PATH={} is not a file; {INSTALL_HINT}",
                path.display()
            )))
        };
    }
    let mut looked = vec!["ORT_DYLIB_PATH (unset)".to_string()];
    match std::env::var_os("VIRTUAL_ENV") {
        Some(venv) => {
            let venv = PathBuf::from(venv);
            if let Some(library) = library_in_virtual_env(&venv) {
                return Ok(library);
            }
            looked.push(format!(
                "the active virtual environment {} (no onnxruntime wheel in lib/python3*/site-packages)",
                venv.display()
            ));
        }
        None => looked.push("an active virtual environment (VIRTUAL_ENV unset)".into()),
    }
    match python_wheel_folder() {
        Some(folder) => match library_in(&folder) {
            Some(library) => return Ok(library),
            None => looked.push(format!("{} (no libonnxruntime.so*)", folder.display())),
        },
        None => looked.push("python3 on the PATH (cannot import onnxruntime)".into()),
    }
    Err(runtime_error(format!(
        "ONNX Runtime not found; looked in: {}; {INSTALL_HINT}",
        looked.join(", ")
    )))
}

fn library_in_virtual_env(venv: &std::path::Path) -> Option<PathBuf> {
    let lib = venv.join("lib");
    let mut pythons: Vec<PathBuf> = std::fs::read_dir(&lib)
        .ok()?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("python3"))
        })
        .collect();
    pythons.sort();
    pythons
        .iter()
        .rev()
        .find_map(|p| library_in(&p.join("site-packages/onnxruntime/capi")))
}

/// The `capi` folder of the onnxruntime wheel that `python3` on the PATH imports.
fn python_wheel_folder() -> Option<PathBuf> {
    let out = std::process::Command::new("python3")
        .args(["-c", "import onnxruntime, os; print(os.path.join(os.path.dirname(onnxruntime.__file__), 'capi'))"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// The newest `libonnxruntime.so*` in `folder` (the wheel ships only versioned names).
fn library_in(folder: &std::path::Path) -> Option<PathBuf> {
    std::fs::read_dir(folder)
        .ok()?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("libonnxruntime.so"))
        })
        .max()
}

/// The process-wide ONNX Runtime environment (ONNX Runtime allows one per process).
fn environment() -> Result<&'static Environment> {
    loaded().map(|(environment, _)| environment)
}

/// Loads ONNX Runtime (once per process) and returns the library's path.
pub(super) fn load() -> Result<PathBuf> {
    loaded().map(|(_, path)| path.clone())
}

fn loaded() -> Result<&'static (Environment, PathBuf)> {
    static ENVIRONMENT: OnceLock<std::result::Result<(Environment, PathBuf), String>> =
        OnceLock::new();
    ENVIRONMENT
        .get_or_init(|| {
            let path = ort_library_path().map_err(|e| match e {
                Error::Runtime { message, .. } => message,
                other => other.to_string(),
            })?;
            let builder = ort::init_from(&path)
                .map_err(|e| format!("cannot load {}: {e}; {INSTALL_HINT}", path.display()))?;
            let environment = builder
                .with_name("mambalrp")
                .build()
                .map_err(|e| e.to_string())?;
            Ok((environment, path))
        })
        .as_ref()
        .map_err(|message| Error::Runtime {
            runtime: "onnxruntime",
            message: message.clone(),
        })
}

/// A model loaded into an ONNX Runtime CPU session with all graph optimizations (ORT_ENABLE_ALL).
pub struct OrtModel {
    session: Session,
}

impl OrtModel {
    pub fn new(model: &ModelProto) -> Result<OrtModel> {
        let bytes = encode_model(model);
        Self::build(&[], |builder| builder.commit_from_memory(&bytes))
    }

    /// Loads from a file, letting ONNX Runtime read external data next to it (needed above the
    /// 2 GiB protobuf limit).
    pub fn from_file(path: &std::path::Path) -> Result<OrtModel> {
        Self::build(&[], |builder| builder.commit_from_file(path))
    }

    /// Loads from a file for one run (verification, `check`): without prepacked weights, which
    /// would hold a second, reordered copy of every MatMul weight and only pay off over many
    /// runs (on the 130M model: 0.9 instead of 1.1 GB, and a faster session), and optionally
    /// without constant folding (see `ModelSource::CompiledFile`) or without any graph
    /// optimization (`optimize` false: every node runs as written).
    pub fn from_file_for_one_run(
        path: &std::path::Path,
        fold_constants: bool,
        optimize: bool,
    ) -> Result<OrtModel> {
        let mut config = vec![("session.disable_prepacking", "1")];
        if !fold_constants {
            config.push((
                "optimization.disable_specified_optimizers",
                "ConstantFolding",
            ));
        }
        let level = if optimize {
            GraphOptimizationLevel::All
        } else {
            GraphOptimizationLevel::Disable
        };
        Self::build_at(level, &config, |builder| builder.commit_from_file(path))
    }

    fn build(
        config: &[(&str, &str)],
        commit: impl FnOnce(&mut ort::session::builder::SessionBuilder) -> ort::Result<Session>,
    ) -> Result<OrtModel> {
        Self::build_at(GraphOptimizationLevel::All, config, commit)
    }

    fn build_at(
        level: GraphOptimizationLevel,
        config: &[(&str, &str)],
        commit: impl FnOnce(&mut ort::session::builder::SessionBuilder) -> ort::Result<Session>,
    ) -> Result<OrtModel> {
        let session = Session::builder(environment()?)
            .and_then(|b| b.with_optimization_level(level).map_err(Into::into))
            .and_then(|mut b| {
                for (key, value) in config {
                    b = b.with_config_entry(key, value)?;
                }
                Ok(b)
            })
            .and_then(|mut b| commit(&mut b))
            .map_err(runtime_error)?;
        Ok(OrtModel { session })
    }

    pub fn input_names(&self) -> Vec<String> {
        self.session
            .inputs()
            .iter()
            .map(|i| i.name().to_string())
            .collect()
    }

    /// Runs on the named inputs; returns the float32 outputs by name, in graph order.
    pub fn run(&mut self, inputs: &[(String, Tensor)]) -> Result<Vec<(String, ArrayD<f32>)>> {
        let mut feed: Vec<(String, DynValue)> = Vec::new();
        for outlet in self.session.inputs() {
            let name = outlet.name().to_string();
            let (_, value) = inputs
                .iter()
                .find(|(n, _)| *n == name)
                .ok_or_else(|| Error::Verify(format!("no value given for model input '{name}'")))?;
            let value: DynValue = match value {
                Tensor::F32(a) => OrtTensor::from_array(a.clone())
                    .map_err(runtime_error)?
                    .into_dyn(),
                Tensor::I64(a) => OrtTensor::from_array(a.clone())
                    .map_err(runtime_error)?
                    .into_dyn(),
                Tensor::Bool(a) => OrtTensor::from_array(a.clone())
                    .map_err(runtime_error)?
                    .into_dyn(),
            };
            feed.push((name, value));
        }
        let names: Vec<String> = self
            .session
            .outputs()
            .iter()
            .map(|o| o.name().to_string())
            .collect();
        let outputs = self.session.run(feed).map_err(runtime_error)?;
        let mut result = Vec::new();
        for name in names {
            if let Ok(array) = outputs[name.as_str()].try_extract_array::<f32>() {
                result.push((name, array.to_owned()));
            }
        }
        Ok(result)
    }
}

/// Runs `model` once in ONNX Runtime.
pub fn run_ort(
    model: &ModelProto,
    inputs: &[(String, Tensor)],
) -> Result<Vec<(String, ArrayD<f32>)>> {
    OrtModel::new(model)?.run(inputs)
}
