//! Generated images handed to C: RGB buffers with their geometry, and the PNG encoder that embeds
//! each image's provenance.

use super::panic::{boundary, boundary_or};
use super::ptr::{free_handle, handle, new_handle, out, Kind};
use super::status::{dpoimg_status, Error, DPOIMG_ERR_IO};
use crate::engine::Image;
use crate::provenance::{encode_png, Provenance};

/// One image: 8-bit RGB, rows top to bottom. Read-only; owned by the `dpoimg_images` it came
/// from and valid until that is freed.
#[repr(C)]
#[derive(Debug)]
#[allow(non_camel_case_types)]
pub struct dpoimg_image {
    pub width: u32,
    pub height: u32,
    /// Bytes from the start of one row to the next (at least 3 x width).
    pub stride: usize,
    /// `stride x height` bytes (`len`).
    pub data: *const u8,
    pub len: usize,
}

/// The images of one generate call, with what made them (opaque).
#[allow(non_camel_case_types)]
pub struct dpoimg_images {
    _opaque: [u8; 0],
}

/// What a `dpoimg_images` handle holds.
pub(crate) struct ImagesHandle {
    // `views[i].data` points into `images[i].rgb`, which is never touched again.
    views: Vec<dpoimg_image>,
    images: Vec<Image>,
    provenance: Vec<Provenance>,
}

// SAFETY: `views` only points into `images`, owned by the same value and never mutated.
unsafe impl Send for ImagesHandle {}
unsafe impl Sync for ImagesHandle {}

impl Kind for dpoimg_images {
    type Inner = ImagesHandle;
    const TAG: u64 = 0x6470_6f69_6d67_494d; // "dpoimgIM"
    const NAME: &'static str = "dpoimg_images";
}

impl ImagesHandle {
    /// The handle C receives for these images.
    pub(crate) fn into_handle(
        images: Vec<Image>,
        provenance: Vec<Provenance>,
    ) -> *mut dpoimg_images {
        let views = images
            .iter()
            .map(|im| dpoimg_image {
                width: im.width,
                height: im.height,
                stride: im.width as usize * 3,
                data: im.rgb.as_ptr(),
                len: im.rgb.len(),
            })
            .collect();
        new_handle::<dpoimg_images>(ImagesHandle {
            views,
            images,
            provenance,
        })
    }

    fn index(&self, index: usize) -> Result<usize, Error> {
        if index < self.views.len() {
            Ok(index)
        } else {
            Err(Error::invalid(format!(
                "image index {index} is out of range (there are {})",
                self.views.len()
            )))
        }
    }
}

/// A byte buffer the library allocated (a PNG file). Read-only; free with `dpoimg_bytes_free`.
#[repr(C)]
#[derive(Debug)]
#[allow(non_camel_case_types)]
pub struct dpoimg_bytes {
    pub data: *const u8,
    pub len: usize,
}

/// The allocation behind a `dpoimg_bytes`: the public view first, so the view's address is the
/// allocation's.
#[repr(C)]
struct OwnedBytes {
    view: dpoimg_bytes,
    tag: u64,
    buf: Box<[u8]>,
}

const BYTES_TAG: u64 = 0x6470_6f69_6d67_4259; // "dpoimgBY"

/// Number of images (0 for NULL). Thread-safety: any thread (images are read-only).
///
/// # Safety
/// `images` is NULL or a live `dpoimg_images`.
#[no_mangle]
pub unsafe extern "C" fn dpoimg_images_count(images: *const dpoimg_images) -> usize {
    boundary_or(0, || handle(images).map_or(0, |i| i.views.len()))
}

/// Writes image `index` to `*out_image` (owned by `images`).
///
/// Errors: DPOIMG_ERR_MISUSE, DPOIMG_ERR_INVALID_ARGUMENT (index out of range).
/// Thread-safety: any thread (read-only).
///
/// # Safety
/// `images` is a live `dpoimg_images`; `out_image` is writable.
#[no_mangle]
pub unsafe extern "C" fn dpoimg_images_get(
    images: *const dpoimg_images,
    index: usize,
    out_image: *mut *const dpoimg_image,
) -> dpoimg_status {
    boundary(|| {
        let im = handle(images)?;
        let out_image = out(out_image, "out_image")?;
        let i = im.index(index)?;
        out_image.write(&im.views[i]);
        Ok(())
    })
}

/// Encodes image `index` as a PNG file in memory, with its provenance (prompt, negative prompt,
/// seed, batch index, sampler, steps, guidance, size, adapters with strengths and sha256, bundle
/// name and sha256) as UTF-8 iTXt chunks, exactly as the `dpoimg` command-line tool writes it.
/// Writes a new buffer to `*out_png`; free it with `dpoimg_bytes_free`.
///
/// Errors: DPOIMG_ERR_MISUSE, DPOIMG_ERR_INVALID_ARGUMENT, DPOIMG_ERR_IO (encoder failure).
/// Thread-safety: any thread.
///
/// # Safety
/// `images` is a live `dpoimg_images`; `out_png` is writable.
#[no_mangle]
pub unsafe extern "C" fn dpoimg_images_encode_png(
    images: *const dpoimg_images,
    index: usize,
    out_png: *mut *mut dpoimg_bytes,
) -> dpoimg_status {
    boundary(|| {
        let im = handle(images)?;
        let out_png = out(out_png, "out_png")?;
        let i = im.index(index)?;
        let png = encode_png(&im.images[i], Some(&im.provenance[i]))
            .map_err(|e| Error::new(DPOIMG_ERR_IO, format!("PNG encoding failed: {e}")))?;
        let buf = png.into_boxed_slice();
        let owned = Box::new(OwnedBytes {
            view: dpoimg_bytes {
                data: buf.as_ptr(),
                len: buf.len(),
            },
            tag: BYTES_TAG,
            buf,
        });
        out_png.write(Box::into_raw(owned).cast::<dpoimg_bytes>());
        Ok(())
    })
}

/// Frees a buffer from this library. NULL is a no-op. Thread-safety: once no thread reads it.
///
/// # Safety
/// `bytes` is NULL or a buffer returned by this library, freed once.
#[no_mangle]
pub unsafe extern "C" fn dpoimg_bytes_free(bytes: *mut dpoimg_bytes) {
    boundary_or((), || {
        let owned = bytes.cast::<OwnedBytes>();
        if let Some(o) = owned.as_mut() {
            if o.tag == BYTES_TAG {
                std::ptr::write_volatile(&mut o.tag, 0);
                // The buffer is freed with its owner.
                drop(Box::from_raw(owned));
            }
        }
    })
}

/// Frees the images of a generate call. NULL is a no-op. Thread-safety: once no thread reads
/// them or their `dpoimg_image` views.
///
/// # Safety
/// `images` is NULL or a live `dpoimg_images`, freed once; its `dpoimg_image` views die with it.
#[no_mangle]
pub unsafe extern "C" fn dpoimg_images_free(images: *mut dpoimg_images) {
    boundary_or((), || free_handle(images))
}
