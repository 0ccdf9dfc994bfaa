//! Reading and writing model files. Output files appear only complete: we write a temporary
//! file next to the target and rename it over.
use std::io::Write;
use std::path::Path;

use bytes::buf::UninitSlice;
use bytes::{BufMut, Bytes};
use prost::Message;

use super::proto::ModelProto;
use crate::error::{Error, Result};

/// Model files at least this large are memory-mapped rather than read. The compiler never
/// looks at weight bytes until it writes them out, so mapped weights are paged in only then,
/// after the big exported graph has been replaced by the compact one: peak memory stays near
/// the model size instead of model + decoded graph.
const MAP_AT_BYTES: u64 = 64 << 20;

/// Reads a model and any external data it references (from its own folder only).
pub fn load_model(path: &Path) -> Result<ModelProto> {
    load_model_mapped(path).map(|loaded| loaded.model)
}

/// A memory-mapped file whose bytes the tensors of a loaded model borrow.
#[derive(Clone)]
pub struct MappedFile {
    pub path: std::path::PathBuf,
    bytes: Bytes,
}

impl MappedFile {
    /// Maps `path` if it is large enough to be worth it (see [`MAP_AT_BYTES`]).
    pub(super) fn map_if_large(path: &Path, file: &std::fs::File) -> Result<Option<MappedFile>> {
        let read_error = |source| Error::Read {
            path: path.into(),
            source,
        };
        if file.metadata().map_err(read_error)?.len() < MAP_AT_BYTES {
            return Ok(None);
        }
        // SAFETY: the map is read-only and private to us. Should another process truncate
        // the file while we compile, reads past the new end fault; documented in README.
        let map = unsafe { memmap2::Mmap::map(file) }.map_err(read_error)?;
        Ok(Some(MappedFile {
            path: path.to_path_buf(),
            bytes: Bytes::from_owner(map),
        }))
    }

    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// Where `data` starts in the file, when `data` lies inside this mapping.
    pub fn offset_of(&self, data: &[u8]) -> Option<u64> {
        let base = self.bytes.as_ptr() as usize;
        let start = data.as_ptr() as usize;
        (start >= base && start + data.len() <= base + self.bytes.len())
            .then(|| (start - base) as u64)
    }
}

/// A loaded model and the mapped files its weights borrow (none for small files, which are
/// read into memory).
pub struct LoadedModel {
    pub model: ModelProto,
    pub mapped: Vec<MappedFile>,
}

/// Like [`load_model`], also returning the mapped files.
pub fn load_model_mapped(path: &Path) -> Result<LoadedModel> {
    let read_error = |source| Error::Read {
        path: path.into(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let mut mapped = Vec::new();
    let bytes = match MappedFile::map_if_large(path, &file)? {
        Some(map) => {
            let bytes = map.bytes.clone();
            mapped.push(map);
            bytes
        }
        None => Bytes::from(std::fs::read(path).map_err(read_error)?),
    };
    let mut model = decode_shared(bytes, path)?;
    super::external::load_external_data(&mut model, path, &mut mapped)?;
    Ok(LoadedModel { model, mapped })
}

pub fn decode_model(bytes: &[u8], path: &Path) -> Result<ModelProto> {
    decode_shared(Bytes::copy_from_slice(bytes), path)
}

/// Decodes without copying the weights: `raw_data` fields become slices of `bytes`.
fn decode_shared(bytes: Bytes, path: &Path) -> Result<ModelProto> {
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

/// Runs `write` on a temporary file next to `path`, then renames it over `path`, so readers
/// never see a partial file and a failed write leaves nothing behind.
fn write_through_temp(
    path: &Path,
    write: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>,
) -> Result<()> {
    let temp = temp_path(path);
    let result = (|| {
        let mut file = std::fs::File::create(&temp)?;
        write(&mut file)?;
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

/// Writes `bytes` to `path` atomically (see [`write_through_temp`]).
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    write_through_temp(path, |file| file.write_all(bytes))
}

/// A hidden temporary name next to `path`, for write-then-rename.
pub fn temp_path(path: &Path) -> std::path::PathBuf {
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{file_name}.{}.tmp", std::process::id()))
}

/// Protobuf messages cannot exceed 2 GiB.
const PROTOBUF_LIMIT: usize = (1 << 31) - 1;

/// A `BufMut` that streams an encoding into a file through a fixed buffer, so writing a large
/// model never holds a second copy of it in memory.
struct FileSink<'f> {
    file: &'f mut std::fs::File,
    buffer: Vec<u8>,
    error: Option<std::io::Error>,
}

impl FileSink<'_> {
    const CAPACITY: usize = 8 << 20;

    fn flush(&mut self) {
        if !self.buffer.is_empty() {
            if let Err(e) = self.file.write_all(&self.buffer) {
                self.error.get_or_insert(e);
            }
            self.buffer.clear();
        }
    }
}

// SAFETY: `chunk_mut` hands out the vector's spare capacity and `advance_mut` only extends the
// length over bytes the encoder has written there, as the trait requires.
unsafe impl BufMut for FileSink<'_> {
    fn remaining_mut(&self) -> usize {
        isize::MAX as usize
    }

    unsafe fn advance_mut(&mut self, count: usize) {
        let len = self.buffer.len() + count;
        // SAFETY: the caller initialised `count` bytes of the chunk returned by `chunk_mut`.
        unsafe { self.buffer.set_len(len) };
        if self.buffer.len() == self.buffer.capacity() {
            self.flush();
        }
    }

    fn chunk_mut(&mut self) -> &mut UninitSlice {
        if self.buffer.len() == self.buffer.capacity() {
            self.flush();
        }
        UninitSlice::uninit(self.buffer.spare_capacity_mut())
    }
}

/// Encodes `model` straight into `path`, atomically.
pub(crate) fn stream_model_atomically(model: &ModelProto, path: &Path) -> Result<()> {
    write_through_temp(path, |file| {
        let mut sink = FileSink {
            file,
            buffer: Vec::with_capacity(FileSink::CAPACITY),
            error: None,
        };
        model
            .encode(&mut sink)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        sink.flush();
        sink.error.take().map_or(Ok(()), Err)
    })
}

pub fn save_model_atomically(model: &ModelProto, path: &Path) -> Result<()> {
    if model.encoded_len() > PROTOBUF_LIMIT {
        return Err(Error::Unsupported(format!(
            "{} would exceed the 2 GiB protobuf limit; write it with external data",
            path.display()
        )));
    }
    stream_model_atomically(model, path)
}

/// Writes the model with its large initializers in `PATH.data` next to it (the data file
/// first, so the model never references a missing file).
pub fn save_model_with_external_data(mut model: ModelProto, path: &Path) -> Result<()> {
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    super::external::write_external_data(
        &mut model,
        &path.with_file_name(format!("{file_name}.data")),
    )?;
    save_model_atomically(&model, path)
}

/// Writes the model inline, or with external data when asked to or when it would not fit in
/// one protobuf message.
pub fn save_model(model: ModelProto, path: &Path, external_data: bool) -> Result<()> {
    if external_data || model.encoded_len() > PROTOBUF_LIMIT {
        save_model_with_external_data(model, path)
    } else {
        save_model_atomically(&model, path)
    }
}
