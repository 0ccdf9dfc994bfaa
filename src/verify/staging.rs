//! Model files for verification that do not double the weights in memory. ONNX Runtime
//! loading a model with inline weights holds them twice while it builds its session (the
//! parsed protobuf and its own tensors): 2.1x the model on the 130M export; external data at
//! page-aligned offsets it memory-maps instead (0.9x). So verification writes the weights once
//! into an aligned data file in a staging folder and small graph files referring to it, one
//! for the original and one for the compiled model (which share most weights). The weights
//! are copied from the input file with plain reads, never through our own memory map, so our
//! memory does not grow either.
use std::collections::HashMap;
use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::onnx::io::{stream_model_atomically, MappedFile};
use crate::onnx::proto::{tensor_proto::DataLocation, ModelProto, StringStringEntryProto};

/// Tensors at least this large go to the data file.
const EXTERNAL_AT_BYTES: usize = 1024;
/// Data offsets are multiples of this, so the runtime can map the data in place.
const ALIGNMENT: u64 = 4096;
const DATA_FILE: &str = "weights.bin";

/// The shared data file: where each weight (by address and length) went.
struct DataFile {
    file: File,
    end: u64,
    placed: HashMap<(usize, usize), u64>,
}

/// A hidden folder next to the output for the files verification runs; removed when dropped.
pub struct StagingFolder {
    path: PathBuf,
    data: Option<DataFile>,
}

impl StagingFolder {
    pub fn create(output: &Path) -> Result<StagingFolder> {
        let name = output
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let path = output.with_file_name(format!(".{name}.{}.verify", std::process::id()));
        std::fs::create_dir(&path).map_err(|source| Error::Write {
            path: output.into(),
            source,
        })?;
        Ok(StagingFolder { path, data: None })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `model` as `file_name` in the folder, its weights in the shared data file
    /// (`model` is left as it was). `mapped` says which weights are slices of which input
    /// file, to copy them from there.
    pub fn write_view(
        &mut self,
        model: &mut ModelProto,
        mapped: &[MappedFile],
        file_name: &str,
    ) -> Result<PathBuf> {
        let mut moved: Vec<(usize, Bytes, Option<i32>, Vec<StringStringEntryProto>)> = Vec::new();
        let mut result = Ok(());
        if let Some(graph) = model.graph.as_mut() {
            for (index, tensor) in graph.initializer.iter_mut().enumerate() {
                let Some(raw) = tensor
                    .raw_data
                    .as_ref()
                    .filter(|r| r.len() >= EXTERNAL_AT_BYTES)
                else {
                    continue;
                };
                let offset = match self.place(raw, mapped) {
                    Ok(offset) => offset,
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                };
                let entry = |key: &str, value: String| StringStringEntryProto {
                    key: Some(key.into()),
                    value: Some(value),
                };
                let external = vec![
                    entry("location", DATA_FILE.into()),
                    entry("offset", offset.to_string()),
                    entry("length", raw.len().to_string()),
                ];
                let old_external = std::mem::replace(&mut tensor.external_data, external);
                let old_location = tensor.data_location.replace(DataLocation::External as i32);
                let raw = tensor.raw_data.take().expect("checked above");
                moved.push((index, raw, old_location, old_external));
            }
        }
        let path = self.path.join(file_name);
        let written = result
            .and_then(|()| self.flush())
            .and_then(|()| stream_model_atomically(model, &path));
        // Put the weights back whatever happened.
        if let Some(graph) = model.graph.as_mut() {
            for (index, raw, location, external) in moved {
                let tensor = &mut graph.initializer[index];
                tensor.raw_data = Some(raw);
                tensor.external_data = external;
                tensor.data_location = location;
            }
        }
        written.map(|()| path)
    }

    fn write_error(&self, source: std::io::Error) -> Error {
        Error::Write {
            path: self.path.join(DATA_FILE),
            source,
        }
    }

    /// The offset of `raw` in the data file, appending it (aligned) the first time.
    fn place(&mut self, raw: &Bytes, mapped: &[MappedFile]) -> Result<u64> {
        let source = mapped
            .iter()
            .find_map(|m| m.offset_of(raw).map(|offset| (m.path.clone(), offset)));
        // Only mapped weights are shared by address: a heap address may be reused by another
        // tensor once the first is freed.
        let key = (raw.as_ptr() as usize, raw.len());
        if source.is_some() {
            if let Some(offset) = self.data.as_ref().and_then(|d| d.placed.get(&key)) {
                return Ok(*offset);
            }
        }
        if self.data.is_none() {
            let file = File::create(self.path.join(DATA_FILE)).map_err(|e| self.write_error(e))?;
            self.data = Some(DataFile {
                file,
                end: 0,
                placed: HashMap::new(),
            });
        }
        let data = self.data.as_mut().expect("created above");
        let offset = data.end.div_ceil(ALIGNMENT) * ALIGNMENT;
        let copied = (|| -> std::io::Result<()> {
            data.file.seek(SeekFrom::Start(offset))?;
            match &source {
                // Read from the file rather than through the map, which would page the weights
                // into our memory.
                Some((path, at)) => {
                    let mut input = File::open(path)?;
                    input.seek(SeekFrom::Start(*at))?;
                    let copied = std::io::copy(
                        &mut std::io::Read::take(input, raw.len() as u64),
                        &mut data.file,
                    )?;
                    if copied != raw.len() as u64 {
                        return Err(std::io::Error::other(
                            "the input file changed while compiling",
                        ));
                    }
                }
                None => data.file.write_all(raw)?,
            }
            Ok(())
        })();
        copied.map_err(|e| self.write_error(e))?;
        let data = self.data.as_mut().expect("created above");
        data.end = offset + raw.len() as u64;
        if source.is_some() {
            data.placed.insert(key, offset);
        }
        Ok(offset)
    }

    fn flush(&mut self) -> Result<()> {
        let flushed = match self.data.as_mut() {
            Some(data) => data.file.flush(),
            None => Ok(()),
        };
        flushed.map_err(|e| self.write_error(e))
    }
}

impl Drop for StagingFolder {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
