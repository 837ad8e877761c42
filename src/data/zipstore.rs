//! Reading images out of ImageRewardDB's split archives (`images/{split}/{split}_{N}.zip`, about
//! 650 MB each) without extracting them: the central directory is parsed once per archive and the
//! open archive is shared by every image in it.

use super::error::DataError;
use super::image::MAX_ENCODED_BYTES;
use std::collections::HashSet;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// An open zip archive shared by the [`super::ImageSource`]s that point into it. Reads are
/// serialised by a mutex (one file cursor); decoding happens outside the lock.
pub struct SharedZip {
    path: PathBuf,
    names: HashSet<String>,
    archive: Mutex<zip::ZipArchive<BufReader<File>>>,
}

impl std::fmt::Debug for SharedZip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedZip")
            .field("path", &self.path)
            .field("members", &self.names.len())
            .finish()
    }
}

impl SharedZip {
    pub fn open(path: &Path) -> Result<SharedZip, DataError> {
        let file = File::open(path).map_err(|e| DataError::io(path, "open the zip archive", e))?;
        let archive = zip::ZipArchive::new(BufReader::new(file)).map_err(|e| DataError::Zip {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let names = archive
            .file_names()
            .filter_map(|n| n.ok().map(|n| n.into_owned()))
            .collect();
        Ok(SharedZip {
            path: path.to_path_buf(),
            names,
            archive: Mutex::new(archive),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn contains(&self, member: &str) -> bool {
        self.names.contains(member)
    }

    /// The member's decompressed bytes.
    pub fn read(&self, member: &str) -> Result<Vec<u8>, DataError> {
        let err = |message: String| DataError::Zip {
            path: self.path.clone(),
            message: format!("member `{member}`: {message}"),
        };
        let mut archive = self
            .archive
            .lock()
            .map_err(|_| err("an earlier read panicked".into()))?;
        let mut entry = archive.by_name(member).map_err(|e| err(e.to_string()))?;
        if entry.size() > MAX_ENCODED_BYTES {
            return Err(err(format!(
                "{} bytes, over the {MAX_ENCODED_BYTES}-byte image limit",
                entry.size()
            )));
        }
        let mut out = Vec::with_capacity(entry.size() as usize);
        entry
            .read_to_end(&mut out)
            .map_err(|e| err(e.to_string()))?;
        Ok(out)
    }
}
