//! Reads the external-data locations out of an ONNX file without a protobuf library.
//!
//! ONNX Runtime resolves `external_data` locations relative to the model and follows `..`
//! (a known CVE class), so every location is checked against the bundle directory before a
//! session is created. Only the handful of fields on the path
//! ModelProto.graph(7) → GraphProto.initializer(5) → TensorProto.external_data(13) →
//! StringStringEntryProto{key(1), value(2)} are decoded; everything else is skipped by length.

use super::BundleError;
use std::path::Path;

/// Every `location` value of the model's external-data initializers.
pub(super) fn external_data_locations(path: &Path) -> Result<Vec<String>, BundleError> {
    let bytes = std::fs::read(path).map_err(|e| BundleError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let err = |m: &str| BundleError::Onnx {
        file: path.to_path_buf(),
        message: m.to_string(),
    };
    let mut out = Vec::new();
    for graph in fields(&bytes, 7).map_err(&err)? {
        for init in fields(graph, 5).map_err(&err)? {
            for entry in fields(init, 13).map_err(&err)? {
                let key = fields(entry, 1).map_err(&err)?;
                if key.first().copied() == Some(b"location".as_slice()) {
                    if let Some(v) = fields(entry, 2).map_err(&err)?.first() {
                        out.push(String::from_utf8_lossy(v).into_owned());
                    }
                }
            }
        }
    }
    Ok(out)
}

fn varint(buf: &[u8], pos: &mut usize) -> Result<u64, &'static str> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos).ok_or("truncated varint")?;
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err("varint too long")
}

/// The payloads of every length-delimited field `want` in one message.
fn fields(buf: &[u8], want: u64) -> Result<Vec<&[u8]>, &'static str> {
    let mut pos = 0;
    let mut out = Vec::new();
    while pos < buf.len() {
        let key = varint(buf, &mut pos)?;
        let (field, wire) = (key >> 3, key & 7);
        match wire {
            0 => {
                varint(buf, &mut pos)?;
            }
            1 => pos = pos.checked_add(8).ok_or("overflow")?,
            5 => pos = pos.checked_add(4).ok_or("overflow")?,
            2 => {
                let len = usize::try_from(varint(buf, &mut pos)?).map_err(|_| "length overflow")?;
                let end = pos.checked_add(len).ok_or("length overflow")?;
                let payload = buf.get(pos..end).ok_or("truncated field")?;
                if field == want {
                    out.push(payload);
                }
                pos = end;
            }
            _ => return Err("not a protobuf message (bad wire type)"),
        }
        if pos > buf.len() {
            return Err("truncated field");
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ld(field: u64, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![(field << 3 | 2) as u8, payload.len() as u8];
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn finds_locations_and_rejects_garbage() {
        let entry = [ld(1, b"location"), ld(2, b"../../etc/passwd")].concat();
        let tensor = [ld(1, b"w"), ld(13, &entry)].concat();
        let graph = ld(5, &tensor);
        let model = [vec![0x08, 0x07], ld(7, &graph)].concat(); // ir_version=7, graph
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.onnx");
        std::fs::write(&p, &model).unwrap();
        assert_eq!(
            external_data_locations(&p).unwrap(),
            vec!["../../etc/passwd"]
        );
        std::fs::write(&p, [0x3a, 0xff, 0x01]).unwrap();
        assert!(external_data_locations(&p).is_err());
    }
}
