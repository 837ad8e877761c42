//! Loaded adapters: an engine's table of LoRA adapters by name, and adapter handles.
//!
//! An adapter is read and validated against the bundle once (`dpoimg_engine_adapter_load`), then
//! referenced per request by handle or by name. Handles are reference-counted: unloading a name
//! or closing the engine never invalidates a handle the caller still holds, and a generation in
//! flight keeps the adapters it started with.

use super::engine::dpoimg_engine;
use super::panic::{boundary, boundary_or};
use super::ptr::{
    as_tagged, free_handle, handle, is_live, new_handle, opt_str, out, req_str, Kind, Tagged,
};
use super::status::dpoimg_status;
use super::status::{to_cstring, Error, DPOIMG_ERR_EXISTS, DPOIMG_ERR_NOT_FOUND};
use crate::lora::LoraAdapter;
use std::collections::BTreeMap;
use std::ffi::{c_char, CString};
use std::path::Path;
use std::sync::{Arc, RwLock};

/// Read-only facts about a loaded adapter. Owned by the adapter handle (or list) it came from;
/// the strings are NUL-terminated UTF-8 and live as long as that handle.
#[repr(C)]
#[derive(Debug)]
#[allow(non_camel_case_types)]
pub struct dpoimg_adapter_info {
    /// The name it is loaded under (unique per engine).
    pub name: *const c_char,
    /// The file it was read from.
    pub path: *const c_char,
    /// sha256 of the file, lowercase hex (recorded in every image's provenance).
    pub sha256: *const c_char,
    /// Its LoRA rank (the largest, if modules differ).
    pub rank: u32,
}

/// One loaded adapter (opaque, reference-counted).
#[allow(non_camel_case_types)]
pub struct dpoimg_adapter {
    _opaque: [u8; 0],
}

/// What a `dpoimg_adapter` handle holds; shared through an `Arc` by the engine's table, lists,
/// generations in flight and the caller's handles.
pub(crate) struct AdapterHandle {
    pub(crate) engine_id: u64,
    pub(crate) adapter: Arc<LoraAdapter>,
    pub(crate) name: String,
    info: dpoimg_adapter_info,
    // Backing storage of `info`'s strings.
    _strings: [CString; 3],
}

// SAFETY: the raw pointers in `info` point into `_strings`, owned by the same value and never
// mutated; everything else is Send + Sync.
unsafe impl Send for AdapterHandle {}
unsafe impl Sync for AdapterHandle {}

impl Kind for dpoimg_adapter {
    type Inner = AdapterHandle;
    const TAG: u64 = 0x6470_6f69_6d67_4144; // "dpoimgAD"
    const NAME: &'static str = "dpoimg_adapter";
}

type Shared = Arc<Tagged<AdapterHandle>>;

impl AdapterHandle {
    fn new_shared(engine_id: u64, name: String, adapter: Arc<LoraAdapter>) -> Shared {
        let strings = [
            to_cstring(&name),
            to_cstring(&adapter.path.display().to_string()),
            to_cstring(&adapter.hash),
        ];
        let info = dpoimg_adapter_info {
            name: strings[0].as_ptr(),
            path: strings[1].as_ptr(),
            sha256: strings[2].as_ptr(),
            rank: adapter.rank() as u32,
        };
        Arc::new(Tagged::new::<dpoimg_adapter>(AdapterHandle {
            engine_id,
            adapter,
            name,
            info,
            _strings: strings,
        }))
    }
}

/// An engine's adapters by name.
#[derive(Default)]
pub(crate) struct AdapterTable(RwLock<BTreeMap<String, Shared>>);

impl AdapterTable {
    pub(crate) fn get(&self, name: &str) -> Result<Shared, Error> {
        let t = self.0.read().unwrap_or_else(|p| p.into_inner());
        t.get(name).cloned().ok_or_else(|| {
            Error::new(
                DPOIMG_ERR_NOT_FOUND,
                format!("no adapter named {name:?} is loaded on this engine"),
            )
        })
    }
    fn insert(&self, a: Shared) -> Result<(), Error> {
        let mut t = self.0.write().unwrap_or_else(|p| p.into_inner());
        if t.contains_key(&a.value.name) {
            return Err(Error::new(
                DPOIMG_ERR_EXISTS,
                format!(
                    "an adapter named {:?} is already loaded; unload it first or choose another name",
                    a.value.name
                ),
            ));
        }
        t.insert(a.value.name.clone(), a);
        Ok(())
    }
    fn remove(&self, name: &str) -> Option<Shared> {
        self.0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name)
    }
    fn snapshot(&self) -> Vec<Shared> {
        let t = self.0.read().unwrap_or_else(|p| p.into_inner());
        t.values().cloned().collect()
    }
}

/// Reads the adapter file at `path` (NUL-terminated UTF-8; diffusers/peft or kohya safetensors),
/// validates it against the engine's bundle and loads it under `name` (NULL = the file name
/// without extension). If `out_adapter` is not NULL it receives a new handle the caller frees with
/// `dpoimg_adapter_free` (it stays valid after an unload or an engine close).
///
/// Errors: DPOIMG_ERR_MISUSE, DPOIMG_ERR_INVALID_ARGUMENT (bad UTF-8, empty name),
/// DPOIMG_ERR_ADAPTER (unreadable or does not fit the bundle), DPOIMG_ERR_EXISTS (name taken).
/// Thread-safety: any thread, concurrently with generations (which keep the adapters they started
/// with).
///
/// # Safety
/// `engine` is a live engine; strings are NULL or NUL-terminated; `out_adapter` is NULL or
/// writable.
#[no_mangle]
pub unsafe extern "C" fn dpoimg_engine_adapter_load(
    engine: *const dpoimg_engine,
    path: *const c_char,
    name: *const c_char,
    out_adapter: *mut *const dpoimg_adapter,
) -> dpoimg_status {
    boundary(|| {
        let e = handle(engine)?;
        e.record(|| {
            let path = req_str(path, "path")?;
            let name = opt_str(name, "name")?;
            if name == Some("") {
                return Err(Error::invalid("adapter `name` is empty"));
            }
            let adapter = e.engine.load_adapter(Path::new(path))?;
            let name = name.map_or_else(|| adapter.name.clone(), str::to_string);
            let a = AdapterHandle::new_shared(e.id, name, adapter);
            e.adapters.insert(Arc::clone(&a))?;
            if !out_adapter.is_null() {
                out_adapter.write(Arc::into_raw(a).cast::<dpoimg_adapter>());
            }
            Ok(())
        })
    })
}

/// Removes the adapter loaded under `name` from the engine. Handles to it stay valid, and
/// generations already running keep using it.
///
/// Errors: DPOIMG_ERR_MISUSE, DPOIMG_ERR_INVALID_ARGUMENT (bad UTF-8), DPOIMG_ERR_NOT_FOUND.
/// Thread-safety: any thread.
///
/// # Safety
/// `engine` is a live engine; `name` is NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn dpoimg_engine_adapter_unload(
    engine: *const dpoimg_engine,
    name: *const c_char,
) -> dpoimg_status {
    boundary(|| {
        let e = handle(engine)?;
        e.record(|| {
            let name = req_str(name, "name")?;
            e.adapters.remove(name).map(drop).ok_or_else(|| {
                Error::new(
                    DPOIMG_ERR_NOT_FOUND,
                    format!("no adapter named {name:?} is loaded on this engine"),
                )
            })
        })
    })
}

/// Writes the facts of `adapter` to `*out_info` (owned by `adapter`, valid until it is freed).
///
/// Thread-safety: any thread.
///
/// # Safety
/// `adapter` is a live adapter handle; `out_info` is writable.
#[no_mangle]
pub unsafe extern "C" fn dpoimg_adapter_get_info(
    adapter: *const dpoimg_adapter,
    out_info: *mut *const dpoimg_adapter_info,
) -> dpoimg_status {
    boundary(|| {
        let a = handle(adapter)?;
        out(out_info, "out_info")?.write(&a.info);
        Ok(())
    })
}

/// Releases an adapter handle from `dpoimg_engine_adapter_load`. NULL is a no-op. Does not unload
/// the adapter from its engine.
///
/// Thread-safety: any thread, once no other call uses this handle.
///
/// # Safety
/// `adapter` is NULL or a handle returned by `dpoimg_engine_adapter_load`, freed once.
#[no_mangle]
pub unsafe extern "C" fn dpoimg_adapter_free(adapter: *const dpoimg_adapter) {
    boundary_or((), || {
        if is_live(adapter) {
            drop(Arc::from_raw(as_tagged(adapter)));
        }
    })
}

/// A snapshot of an engine's loaded adapters, sorted by name (opaque).
#[allow(non_camel_case_types)]
pub struct dpoimg_adapter_list {
    _opaque: [u8; 0],
}

impl Kind for dpoimg_adapter_list {
    type Inner = Vec<Shared>;
    const TAG: u64 = 0x6470_6f69_6d67_414c; // "dpoimgAL"
    const NAME: &'static str = "dpoimg_adapter_list";
}

/// Writes a snapshot of the adapters loaded on `engine` to `*out_list`; free it with
/// `dpoimg_adapter_list_free`. Later loads and unloads do not change the snapshot.
///
/// Thread-safety: any thread.
///
/// # Safety
/// `engine` is a live engine; `out_list` is writable.
#[no_mangle]
pub unsafe extern "C" fn dpoimg_engine_adapter_list(
    engine: *const dpoimg_engine,
    out_list: *mut *mut dpoimg_adapter_list,
) -> dpoimg_status {
    boundary(|| {
        let e = handle(engine)?;
        e.record(|| {
            let out_list = out(out_list, "out_list")?;
            out_list.write(new_handle::<dpoimg_adapter_list>(e.adapters.snapshot()));
            Ok(())
        })
    })
}

/// Number of adapters in a list; 0 for NULL. Thread-safety: any thread (a list is read-only).
///
/// # Safety
/// `list` is NULL or a live list.
#[no_mangle]
pub unsafe extern "C" fn dpoimg_adapter_list_count(list: *const dpoimg_adapter_list) -> usize {
    boundary_or(0, || handle(list).map_or(0, |l| l.len()))
}

/// Writes adapter `index` of `list` to `*out_adapter`: a handle borrowed from the list, valid until
/// the list is freed (do not pass it to `dpoimg_adapter_free`). It can be used in generate options
/// like any handle.
///
/// Errors: DPOIMG_ERR_MISUSE, DPOIMG_ERR_INVALID_ARGUMENT (index out of range).
/// Thread-safety: any thread.
///
/// # Safety
/// `list` is a live list; `out_adapter` is writable.
#[no_mangle]
pub unsafe extern "C" fn dpoimg_adapter_list_get(
    list: *const dpoimg_adapter_list,
    index: usize,
    out_adapter: *mut *const dpoimg_adapter,
) -> dpoimg_status {
    boundary(|| {
        let l = handle(list)?;
        let out_adapter = out(out_adapter, "out_adapter")?;
        let a = l.get(index).ok_or_else(|| {
            Error::invalid(format!(
                "index {index} is out of range (the list has {})",
                l.len()
            ))
        })?;
        out_adapter.write(Arc::as_ptr(a).cast::<dpoimg_adapter>());
        Ok(())
    })
}

/// Frees a list from `dpoimg_engine_adapter_list`. NULL is a no-op. Thread-safety: once no other
/// call uses the list or an adapter handle borrowed from it.
///
/// # Safety
/// `list` is NULL or a live list, freed once.
#[no_mangle]
pub unsafe extern "C" fn dpoimg_adapter_list_free(list: *mut dpoimg_adapter_list) {
    boundary_or((), || free_handle(list))
}
