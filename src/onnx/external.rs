//! Tensors stored outside the model file (`data_location = EXTERNAL`): reading them in, with the
//! checks that keep a model from reading outside its own folder, and writing them out.
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Component, Path, PathBuf};

use super::proto::{tensor_proto::DataLocation, ModelProto, StringStringEntryProto, TensorProto};
use crate::error::{Error, Result};

/// Initializers at least this large go to the data file when writing with external data.
const EXTERNAL_THRESHOLD_BYTES: usize = 1024;

struct Location {
    file: PathBuf,
    offset: u64,
    length: Option<u64>,
}

fn entry<'a>(tensor: &'a TensorProto, key: &str) -> Option<&'a str> {
    tensor
        .external_data
        .iter()
        .find(|e| e.key() == key)
        .map(|e| e.value())
}

/// Resolves a tensor's external location inside `folder`, refusing absolute paths, `..` and
/// symlinks that lead out of the folder.
fn locate(tensor: &TensorProto, folder: &Path, model: &Path) -> Result<Location> {
    let name = tensor.name();
    let bad = |message: String| {
        Err(Error::tensor(
            name,
            format!("{message} (external data of {})", model.display()),
        ))
    };
    let Some(location) = entry(tensor, "location").filter(|l| !l.is_empty()) else {
        return bad("external data without a location".into());
    };
    let relative = Path::new(location);
    if !relative
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return bad(format!(
            "external data location '{location}' leaves the model's folder; refusing to read it"
        ));
    }
    let file = folder.join(relative);
    let resolved = match file.canonicalize() {
        Ok(p) => p,
        Err(e) => {
            return bad(format!(
                "external data file '{}' cannot be opened: {e}",
                file.display()
            ))
        }
    };
    let root = folder.canonicalize().map_err(|source| Error::Read {
        path: folder.into(),
        source,
    })?;
    if !resolved.starts_with(&root) {
        return bad(format!("external data location '{location}' resolves outside the model's folder; refusing to read it"));
    }
    let number = |key: &str| -> Result<Option<u64>> {
        match entry(tensor, key) {
            None => Ok(None),
            Some(v) => v.parse::<u64>().map(Some).map_err(|_| {
                Error::tensor(name, format!("external data {key} '{v}' is not a number"))
            }),
        }
    };
    Ok(Location {
        file: resolved,
        offset: number("offset")?.unwrap_or(0),
        length: number("length")?,
    })
}

/// Reads every external initializer of `model` (loaded from `model_path`) into `raw_data`:
/// slices of a memory map for large data files (added to `mapped`), copies for small ones.
pub fn load_external_data(
    model: &mut ModelProto,
    model_path: &Path,
    mapped: &mut Vec<super::io::MappedFile>,
) -> Result<()> {
    let folder = match model_path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let Some(graph) = model.graph.as_mut() else {
        return Ok(());
    };
    for tensor in graph
        .initializer
        .iter_mut()
        .filter(|t| t.data_location == Some(DataLocation::External as i32))
    {
        let location = locate(tensor, &folder, model_path)?;
        let expected = super::tensor::byte_size(tensor)?;
        let length = location.length.unwrap_or(expected as u64);
        if length != expected as u64 {
            return Err(Error::tensor(
                tensor.name(),
                format!(
                    "external data length {length} does not match dims {:?} ({expected} bytes)",
                    tensor.dims
                ),
            ));
        }
        let mut file = File::open(&location.file).map_err(|source| Error::Read {
            path: location.file.clone(),
            source,
        })?;
        let available = file
            .metadata()
            .map_err(|source| Error::Read {
                path: location.file.clone(),
                source,
            })?
            .len();
        if location
            .offset
            .checked_add(length)
            .is_none_or(|end| end > available)
        {
            return Err(Error::tensor(
                tensor.name(),
                format!("external data file {} holds {available} bytes, fewer than offset {} + length {length}", location.file.display(), location.offset),
            ));
        }
        let known = mapped.iter().position(|m| m.path == location.file);
        let map = match known {
            Some(i) => Some(i),
            None => super::io::MappedFile::map_if_large(&location.file, &file)?.map(|m| {
                mapped.push(m);
                mapped.len() - 1
            }),
        };
        if let Some(i) = map {
            let start = location.offset as usize;
            tensor.raw_data = Some(mapped[i].bytes().slice(start..start + expected));
        } else {
            let mut data = vec![0u8; expected];
            file.seek(SeekFrom::Start(location.offset))
                .and_then(|_| file.read_exact(&mut data))
                .map_err(|source| Error::Read {
                    path: location.file.clone(),
                    source,
                })?;
            tensor.raw_data = Some(data.into());
        }
        tensor.external_data.clear();
        tensor.data_location = None;
    }
    Ok(())
}

/// Moves every initializer of at least 1 KiB into `data_path` (next to the model, named in the
/// model by its file name), leaving offset/length references in the model.
pub fn write_external_data(model: &mut ModelProto, data_path: &Path) -> Result<()> {
    let location = data_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let Some(graph) = model.graph.as_mut() else {
        return Ok(());
    };
    let write_error = |source| Error::Write {
        path: data_path.into(),
        source,
    };
    let temp = super::io::temp_path(data_path);
    let result = (|| -> Result<()> {
        let mut file = std::io::BufWriter::new(File::create(&temp).map_err(write_error)?);
        let mut offset = 0u64;
        for tensor in graph.initializer.iter_mut() {
            let Some(raw) = tensor
                .raw_data
                .as_ref()
                .filter(|r| r.len() >= EXTERNAL_THRESHOLD_BYTES)
            else {
                continue;
            };
            file.write_all(raw).map_err(write_error)?;
            let length = raw.len() as u64;
            let kv = |k: &str, v: String| StringStringEntryProto {
                key: Some(k.into()),
                value: Some(v),
            };
            tensor.external_data = vec![
                kv("location", location.clone()),
                kv("offset", offset.to_string()),
                kv("length", length.to_string()),
            ];
            tensor.data_location = Some(DataLocation::External as i32);
            tensor.raw_data = None;
            offset += length;
        }
        file.into_inner()
            .map_err(|e| write_error(e.into_error()))?
            .sync_all()
            .map_err(write_error)?;
        std::fs::rename(&temp, data_path).map_err(write_error)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}
