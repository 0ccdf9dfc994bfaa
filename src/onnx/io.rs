//! Reading and writing model files. Output files appear only complete: we write a temporary
//! file next to the target and rename it over.
use std::io::Write;
use std::path::Path;

use prost::Message;

use super::proto::ModelProto;
use crate::error::{Error, Result};

pub fn load_model(path: &Path) -> Result<ModelProto> {
    let bytes = std::fs::read(path).map_err(|source| Error::Read {
        path: path.into(),
        source,
    })?;
    decode_model(&bytes, path)
}

pub fn decode_model(bytes: &[u8], path: &Path) -> Result<ModelProto> {
    if bytes.is_empty() {
        return Err(Error::InvalidModel(format!("{} is empty", path.display())));
    }
    let model = ModelProto::decode(bytes).map_err(|source| Error::Decode {
        path: path.into(),
        source,
    })?;
    if model.graph.is_none() {
        return Err(Error::InvalidModel(format!(
            "{} holds no graph (not an ONNX model?)",
            path.display()
        )));
    }
    Ok(model)
}

pub fn encode_model(model: &ModelProto) -> Vec<u8> {
    model.encode_to_vec()
}

/// Writes `bytes` to `path` through a temporary file in the same folder, so readers never see a
/// partial file and a failed write leaves nothing behind.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let folder = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = folder.join(format!(".{file_name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temp, path)
    })();
    result.map_err(|source| {
        let _ = std::fs::remove_file(&temp);
        Error::Write {
            path: path.into(),
            source,
        }
    })
}

pub fn save_model_atomically(model: &ModelProto, path: &Path) -> Result<()> {
    write_atomically(path, &encode_model(model))
}
