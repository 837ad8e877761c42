//! The CUDA backend of the trainer (cargo feature `cuda`): cudarc with dynamic loading, so the
//! build needs no CUDA toolkit and a binary built on a CPU machine runs on a GPU machine.
//!
//! - GEMMs (and so linear layers, convolutions after im2col, attention's four products) go through
//!   cuBLAS `sgemmStridedBatched` with the row-/column-major swap ([`gemm`]); the handle keeps the
//!   default math mode, which never uses TF32 for f32 (so results stay within float rounding of the
//!   CPU backend — unless the environment sets `NVIDIA_TF32_OVERRIDE=1`).
//! - Everything else is one NVRTC-compiled module of small kernels ([`kernels`]), compiled once per
//!   process and GPU architecture and cached.
//! - f32 throughout; all work is queued on one stream (the context's default stream), so calls are
//!   ordered without any event bookkeeping (cudarc's per-buffer event tracking is switched off; it
//!   only matters for several streams). Downloads synchronise.
//! - Deterministic: no atomics; reductions use fixed block shapes and fixed trees; scatters are
//!   written as gathers. cuBLAS is deterministic for a given GPU model and library version.
//!
//! Why the trait methods panic on a CUDA error rather than return one: the [`Backend`] contract is
//! infallible (the CPU backend cannot fail either), and an error after initialisation means a lost
//! device or exhausted memory, which no caller can repair mid-pass; the panic names the operation
//! and the CUDA error. Everything that can be checked up front — driver, cuBLAS, NVRTC, device,
//! kernel compilation — is checked in [`Cuda::new`] and returned as a [`TrainError`].

mod attention;
mod conv;
mod gemm;
mod kernels;

use super::{AttnDims, Backend, ConvGeom, Gemm, GroupNormDims};
use crate::train::TrainError;
use cudarc::cublas::CudaBlas;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::{CompileOptions, Ptx};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// A dense f32 buffer in device memory. Allocations are at least one element (CUDA refuses
/// zero-byte allocations), `len` is the logical length.
pub struct CudaBuf {
    data: CudaSlice<f32>,
    len: usize,
}

impl Clone for CudaBuf {
    /// A device-to-device copy on the buffer's stream.
    fn clone(&self) -> Self {
        CudaBuf {
            data: self.data.clone(),
            len: self.len,
        }
    }
}

impl std::fmt::Debug for CudaBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaBuf").field("len", &self.len).finish()
    }
}

/// The CUDA backend on one device.
pub struct Cuda {
    ordinal: usize,
    device_name: String,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    /// cuBLAS handles are not meant for concurrent use from several threads.
    blas: Mutex<CudaBlas>,
    funcs: HashMap<&'static str, CudaFunction>,
    _module: Arc<CudaModule>,
    /// Largest scratch buffer (in floats) that convolution (im2col columns) and attention (scores
    /// of one query block) may allocate; work is chunked to fit. See [`Cuda::set_scratch_limit`].
    scratch: AtomicUsize,
}

/// Default scratch limit: 2^26 floats (256 MiB) per buffer.
const DEFAULT_SCRATCH: usize = 1 << 26;

impl std::fmt::Debug for Cuda {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cuda")
            .field("ordinal", &self.ordinal)
            .field("device", &self.device_name)
            .finish()
    }
}

fn dev_err(ordinal: usize, message: impl Into<String>) -> TrainError {
    TrainError::Device {
        device: format!("cuda:{ordinal}"),
        message: message.into(),
    }
}

/// Which CUDA libraries cannot be loaded, each with what to install. cudarc panics on first use
/// of a library it cannot load (a `OnceLock` initialiser), so this runs before any cudarc call.
pub fn missing_libraries() -> Vec<String> {
    let mut missing = Vec::new();
    if !cuda_lib_present("driver") {
        missing.push(
            "no CUDA driver (libcuda.so.1) found: install the NVIDIA driver or use --device cpu"
                .to_string(),
        );
    }
    if !cuda_lib_present("cublas") {
        missing.push(
            "no cuBLAS (libcublas.so.12) found: install the CUDA 12 runtime libraries (e.g. the \
             nvidia-cublas-cu12 wheel or the toolkit) and put them on LD_LIBRARY_PATH, or use \
             --device cpu"
                .to_string(),
        );
    }
    if !cuda_lib_present("nvrtc") {
        missing.push(
            "no NVRTC (libnvrtc.so.12) found: install the CUDA 12 runtime compiler (e.g. the \
             nvidia-cuda-nvrtc-cu12 wheel or the toolkit) and put it on LD_LIBRARY_PATH, or use \
             --device cpu"
                .to_string(),
        );
    }
    missing
}

/// Runs `f`, turning a panic inside cudarc (a library or symbol it cannot load) into an error.
fn guarded<T, E: std::fmt::Debug>(
    ordinal: usize,
    what: &str,
    f: impl FnOnce() -> Result<T, E>,
) -> Result<T, TrainError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(dev_err(ordinal, format!("{what}: {e:?}"))),
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            Err(dev_err(ordinal, format!("{what}: {msg}")))
        }
    }
}

/// The driver's CUDA version as "major.minor" (for error messages).
fn driver_version() -> String {
    let mut v = 0i32;
    // SAFETY: the driver library is loaded (checked by the caller); plain out-parameter.
    let ok = unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut v) };
    if ok == cudarc::driver::sys::CUresult::CUDA_SUCCESS {
        format!("{}.{}", v / 1000, (v % 1000) / 10)
    } else {
        "unknown".into()
    }
}

/// NVRTC's version as "major.minor".
fn nvrtc_version() -> String {
    let (mut a, mut b) = (0i32, 0i32);
    // SAFETY: NVRTC is loaded (checked by the caller); plain out-parameters.
    let ok = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut a, &mut b) };
    if ok == cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS {
        format!("{a}.{b}")
    } else {
        "unknown".into()
    }
}

/// Compiles the kernel module with NVRTC for compute capability `cc` (its virtual architecture
/// `compute_XY`), or NVRTC's default architecture when `None`; returns the PTX. Needs only
/// libnvrtc, no GPU, so tests can check the kernels compile on a machine without a driver.
pub fn compile_kernels(cc: Option<(i32, i32)>) -> Result<String, String> {
    if !cuda_lib_present("nvrtc") {
        return Err("no NVRTC (libnvrtc.so.12) found".into());
    }
    let opts = CompileOptions {
        fmad: Some(false),
        name: Some("dpoimg_train_kernels.cu".into()),
        options: cc
            .map(|(a, b)| vec![format!("--gpu-architecture=compute_{a}{b}")])
            .unwrap_or_default(),
        ..Default::default()
    };
    match std::panic::catch_unwind(|| cudarc::nvrtc::compile_ptx_with_opts(kernels::SOURCE, opts)) {
        Ok(Ok(ptx)) => Ok(ptx.to_src()),
        Ok(Err(e)) => Err(format!("NVRTC could not compile the kernels: {e}")),
        Err(_) => Err("NVRTC could not be loaded".into()),
    }
}

/// Every kernel name of the module (for tests that inspect compiled PTX).
pub fn kernel_names() -> &'static [&'static str] {
    kernels::NAMES
}

fn cuda_lib_present(which: &str) -> bool {
    // SAFETY: these only try `dlopen` on the candidate names and drop the handles.
    unsafe {
        match which {
            "driver" => cudarc::driver::sys::is_culib_present(),
            "cublas" => cudarc::cublas::sys::is_culib_present(),
            _ => cudarc::nvrtc::sys::is_culib_present(),
        }
    }
}

/// PTX of the kernels per compute capability: NVRTC runs once per process and GPU architecture
/// (about a second); every later [`Cuda`] on the same kind of device reuses it.
fn ptx_for(cc: (i32, i32)) -> Result<String, String> {
    static CACHE: OnceLock<Mutex<BTreeMap<(i32, i32), String>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(BTreeMap::new()));
    let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = cache.get(&cc) {
        return Ok(p.clone());
    }
    // The device's own virtual architecture; an NVRTC older than the GPU does not know it, and
    // then its default architecture (JIT-compiled by the driver) is the fallback.
    let src = match compile_kernels(Some(cc)) {
        Ok(p) => p,
        Err(first) => compile_kernels(None)
            .map_err(|e| format!("{e} (for compute_{}{}: {first})", cc.0, cc.1))?,
    };
    cache.insert(cc, src.clone());
    Ok(src)
}

impl Cuda {
    /// Opens device `ordinal`: checks that the driver, cuBLAS and NVRTC libraries load and that
    /// the device exists, creates the cuBLAS handle and compiles (or reuses) the kernels. Every
    /// failure is an error naming what is missing; nothing here panics when CUDA is absent.
    pub fn new(ordinal: usize) -> Result<Cuda, TrainError> {
        let missing = missing_libraries();
        if !missing.is_empty() {
            return Err(dev_err(ordinal, missing.join("; ")));
        }
        let count = guarded(ordinal, "CUDA driver initialisation", || {
            CudaContext::device_count()
        })
        .map_err(|e| {
            dev_err(
                ordinal,
                format!(
                    "{e} (driver CUDA version {}; is a GPU visible to this process?)",
                    driver_version()
                ),
            )
        })?;
        if ordinal >= count.max(0) as usize {
            return Err(dev_err(
                ordinal,
                format!(
                    "no such device: {count} CUDA device(s) present (valid: cuda:0..cuda:{}); use \
                     another ordinal or --device cpu",
                    count.max(1) - 1
                ),
            ));
        }
        let ctx = guarded(ordinal, "creating the CUDA context", || {
            CudaContext::new(ordinal)
        })?;
        // SAFETY: this backend uses one stream only, so no buffer is ever shared between streams
        // and the per-buffer events cudarc would record are never needed.
        unsafe { ctx.disable_event_tracking() };
        let device_name = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        let cc = guarded(ordinal, "querying the compute capability", || {
            ctx.compute_capability()
        })?;
        let stream = ctx.default_stream();
        let blas = guarded(ordinal, "creating the cuBLAS handle", || {
            CudaBlas::new(stream.clone())
        })?;
        // SAFETY: a valid handle; the default math mode keeps f32 GEMMs in f32 (no TF32).
        let st = unsafe {
            cudarc::cublas::sys::cublasSetMathMode(
                *blas.handle(),
                cudarc::cublas::sys::cublasMath_t::CUBLAS_DEFAULT_MATH,
            )
        };
        if st != cudarc::cublas::sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
            return Err(dev_err(ordinal, format!("cublasSetMathMode: {st:?}")));
        }
        let ptx = ptx_for(cc).map_err(|e| dev_err(ordinal, e))?;
        let module = guarded(ordinal, "loading the NVRTC kernels", || {
            ctx.load_module(Ptx::from_src(ptx))
        })
        .map_err(|e| {
            dev_err(
                ordinal,
                format!(
                    "{e} (NVRTC {} vs driver CUDA {}: a driver older than NVRTC cannot load its \
                     PTX; update the driver or use an NVRTC no newer than the driver)",
                    nvrtc_version(),
                    driver_version()
                ),
            )
        })?;
        let mut funcs = HashMap::new();
        for &name in kernels::NAMES {
            let f = guarded(ordinal, &format!("kernel {name}"), || {
                module.load_function(name)
            })?;
            funcs.insert(name, f);
        }
        Ok(Cuda {
            ordinal,
            device_name,
            ctx,
            stream,
            blas: Mutex::new(blas),
            funcs,
            _module: module,
            scratch: AtomicUsize::new(DEFAULT_SCRATCH),
        })
    }

    /// Caps each scratch buffer at `floats` (at least one sample's columns or one query row of
    /// scores is always allowed): lower it on small GPUs; tests lower it to exercise chunking.
    pub fn set_scratch_limit(&self, floats: usize) {
        self.scratch.store(floats.max(1), Ordering::Relaxed);
    }

    fn scratch_limit(&self) -> usize {
        self.scratch.load(Ordering::Relaxed)
    }

    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    /// Waits until every queued operation has finished (for timing).
    pub fn synchronize(&self) {
        ok(self.stream.synchronize(), "synchronize");
    }

    fn f(&self, name: &'static str) -> &CudaFunction {
        self.funcs
            .get(name)
            .unwrap_or_else(|| panic!("CUDA kernel {name} not loaded"))
    }

    /// A zero-filled buffer of `len` elements.
    fn alloc(&self, len: usize) -> CudaBuf {
        let data = ok(self.stream.alloc_zeros::<f32>(len.max(1)), "allocation");
        CudaBuf { data, len }
    }
}

/// Unwraps a CUDA result, naming the operation in the panic (see the module docs for why).
pub(crate) fn ok<T, E: std::fmt::Debug>(r: Result<T, E>, what: &str) -> T {
    r.unwrap_or_else(|e| panic!("CUDA error in {what}: {e:?}"))
}

/// Threads per block of the elementwise kernels.
const ELEM_BLOCK: u32 = 256;
/// Grid cap of the elementwise (grid-stride) kernels: 2^20 blocks of 256 threads.
const MAX_GRID: u64 = 1 << 20;

fn elems(n: usize) -> LaunchConfig {
    let blocks = (n as u64).div_ceil(ELEM_BLOCK as u64).clamp(1, MAX_GRID) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (ELEM_BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One block of [`kernels::BLOCK`] threads per row (reductions).
fn rows_cfg(rows: usize) -> LaunchConfig {
    assert!(
        rows <= i32::MAX as usize,
        "too many rows for one launch: {rows}"
    );
    LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: (kernels::BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn int(v: usize, what: &str) -> i32 {
    i32::try_from(v).unwrap_or_else(|_| panic!("{what} = {v} exceeds the CUDA backend's i32 range"))
}

/// Launches `$name` with `$cfg` and the listed arguments (buffers by reference, scalars by value
/// bound to locals so that they outlive the launch call).
macro_rules! launch {
    ($self:expr, $name:literal, $cfg:expr, [$($arg:expr),* $(,)?]) => {{
        let f = $self.f($name);
        let mut lb = $self.stream.launch_builder(f);
        $( lb.arg($arg); )*
        // SAFETY: every kernel's argument list matches its CUDA signature in kernels.rs (types
        // and order), and the host checked every buffer length against the index range the
        // kernel touches before this launch.
        $crate::train::backend::cuda::ok(unsafe { lb.launch($cfg) }, $name);
    }};
}
pub(crate) use launch;

impl Backend for Cuda {
    type Buf = CudaBuf;

    fn name(&self) -> String {
        format!("cuda:{} ({})", self.ordinal, self.device_name)
    }

    fn upload(&self, data: &[f32]) -> CudaBuf {
        if data.is_empty() {
            return self.alloc(0);
        }
        let d = ok(self.stream.clone_htod(data), "upload");
        CudaBuf {
            data: d,
            len: data.len(),
        }
    }

    fn download(&self, buf: &CudaBuf) -> Vec<f32> {
        if buf.len == 0 {
            return Vec::new();
        }
        ok(
            self.stream.clone_dtoh(&buf.data.slice(0..buf.len)),
            "download",
        )
    }

    fn zeros(&self, len: usize) -> CudaBuf {
        self.alloc(len)
    }

    fn len(&self, buf: &CudaBuf) -> usize {
        buf.len
    }

    fn gemm(&self, g: &Gemm, a: &CudaBuf, b: &CudaBuf, c: &mut CudaBuf) {
        self.gemm_raw(g, (&a.data, a.len), (&b.data, b.len), (&mut c.data, c.len));
    }

    fn add(&self, a: &CudaBuf, b: &CudaBuf) -> CudaBuf {
        assert_eq!(a.len, b.len, "add: length mismatch");
        let mut out = self.alloc(a.len);
        if a.len > 0 {
            let n = a.len as u64;
            launch!(
                self,
                "k_add",
                elems(a.len),
                [&a.data, &b.data, &mut out.data, &n]
            );
        }
        out
    }

    fn add_assign(&self, acc: &mut CudaBuf, x: &CudaBuf) {
        assert_eq!(acc.len, x.len, "add_assign: length mismatch");
        if acc.len > 0 {
            let n = acc.len as u64;
            launch!(
                self,
                "k_add_assign",
                elems(acc.len),
                [&mut acc.data, &x.data, &n]
            );
        }
    }

    fn scale(&self, x: &mut CudaBuf, s: f32) {
        if x.len > 0 {
            let n = x.len as u64;
            launch!(self, "k_scale", elems(x.len), [&mut x.data, &s, &n]);
        }
    }

    fn add_broadcast(&self, y: &mut CudaBuf, v: &CudaBuf, outer: usize, mid: usize, inner: usize) {
        assert_eq!(y.len, outer * mid * inner, "add_broadcast: y length");
        assert_eq!(v.len, mid, "add_broadcast: v length");
        if y.len > 0 {
            let (mid64, inner64, n) = (mid as u64, inner as u64, y.len as u64);
            launch!(
                self,
                "k_add_broadcast",
                elems(y.len),
                [&mut y.data, &v.data, &mid64, &inner64, &n]
            );
        }
    }

    fn sum_inner(&self, x: &CudaBuf, rows: usize, inner: usize) -> CudaBuf {
        assert_eq!(x.len, rows * inner, "sum_inner: length");
        let mut out = self.alloc(rows);
        if rows > 0 && inner > 0 {
            let inner64 = inner as u64;
            launch!(
                self,
                "k_sum_inner",
                rows_cfg(rows),
                [&x.data, &mut out.data, &inner64]
            );
        }
        out
    }

    fn transpose(&self, x: &CudaBuf, batch: usize, rows: usize, cols: usize) -> CudaBuf {
        assert_eq!(x.len, batch * rows * cols, "transpose: length");
        let mut out = self.alloc(x.len);
        if x.len == 0 {
            return out;
        }
        let (gx, gy) = (cols.div_ceil(32), rows.div_ceil(32));
        assert!(
            gy <= 65535 && batch <= 65535,
            "transpose: {batch}×{rows}×{cols} exceeds the grid limits"
        );
        let cfg = LaunchConfig {
            grid_dim: (int(gx, "transpose cols") as u32, gy as u32, batch as u32),
            block_dim: (32, 8, 1),
            shared_mem_bytes: 0,
        };
        let (r, c) = (int(rows, "rows"), int(cols, "cols"));
        launch!(self, "k_transpose", cfg, [&x.data, &mut out.data, &r, &c]);
        out
    }

    fn concat_channels(
        &self,
        a: &CudaBuf,
        b: &CudaBuf,
        n: usize,
        ca: usize,
        cb: usize,
        inner: usize,
    ) -> CudaBuf {
        assert_eq!(a.len, n * ca * inner, "concat: a length");
        assert_eq!(b.len, n * cb * inner, "concat: b length");
        let total = a.len + b.len;
        let mut out = self.alloc(total);
        if total > 0 {
            let (la, lb, nn) = ((ca * inner) as u64, (cb * inner) as u64, total as u64);
            launch!(
                self,
                "k_concat",
                elems(total),
                [&a.data, &b.data, &mut out.data, &la, &lb, &nn]
            );
        }
        out
    }

    fn split_channels(
        &self,
        x: &CudaBuf,
        n: usize,
        ca: usize,
        cb: usize,
        inner: usize,
    ) -> (CudaBuf, CudaBuf) {
        assert_eq!(x.len, n * (ca + cb) * inner, "split: length");
        let mut a = self.alloc(n * ca * inner);
        let mut b = self.alloc(n * cb * inner);
        if x.len > 0 {
            let (la, lb, nn) = ((ca * inner) as u64, (cb * inner) as u64, x.len as u64);
            launch!(
                self,
                "k_split",
                elems(x.len),
                [&x.data, &mut a.data, &mut b.data, &la, &lb, &nn]
            );
        }
        (a, b)
    }

    fn silu(&self, x: &CudaBuf) -> CudaBuf {
        let mut y = self.alloc(x.len);
        if x.len > 0 {
            let n = x.len as u64;
            launch!(self, "k_silu", elems(x.len), [&x.data, &mut y.data, &n]);
        }
        y
    }

    fn silu_backward(&self, x: &CudaBuf, dy: &CudaBuf) -> CudaBuf {
        assert_eq!(x.len, dy.len, "silu_backward: length mismatch");
        let mut dx = self.alloc(x.len);
        if x.len > 0 {
            let n = x.len as u64;
            launch!(
                self,
                "k_silu_backward",
                elems(x.len),
                [&x.data, &dy.data, &mut dx.data, &n]
            );
        }
        dx
    }

    fn geglu(&self, h: &CudaBuf, rows: usize, inner: usize) -> CudaBuf {
        assert_eq!(h.len, rows * 2 * inner, "geglu: length");
        let mut y = self.alloc(rows * inner);
        if rows * inner > 0 {
            let (i64_, n) = (inner as u64, (rows * inner) as u64);
            launch!(
                self,
                "k_geglu",
                elems(rows * inner),
                [&h.data, &mut y.data, &i64_, &n]
            );
        }
        y
    }

    fn geglu_backward(&self, h: &CudaBuf, dy: &CudaBuf, rows: usize, inner: usize) -> CudaBuf {
        assert_eq!(h.len, rows * 2 * inner, "geglu_backward: h length");
        assert_eq!(dy.len, rows * inner, "geglu_backward: dy length");
        let mut dh = self.alloc(h.len);
        if rows * inner > 0 {
            let (i64_, n) = (inner as u64, (rows * inner) as u64);
            launch!(
                self,
                "k_geglu_backward",
                elems(rows * inner),
                [&h.data, &dy.data, &mut dh.data, &i64_, &n]
            );
        }
        dh
    }

    fn group_norm(
        &self,
        x: &CudaBuf,
        d: &GroupNormDims,
        gamma: &CudaBuf,
        beta: &CudaBuf,
        silu: bool,
    ) -> (CudaBuf, CudaBuf) {
        check_gn(x.len, gamma.len, beta.len, d);
        self.norm_forward(
            x,
            gamma,
            beta,
            d.n * d.groups,
            d.c,
            d.hw,
            d.groups,
            d.eps,
            silu,
        )
    }

    fn group_norm_backward(
        &self,
        x: &CudaBuf,
        stats: &CudaBuf,
        gamma: &CudaBuf,
        beta: &CudaBuf,
        dy: &CudaBuf,
        d: &GroupNormDims,
        silu: bool,
    ) -> CudaBuf {
        check_gn(x.len, gamma.len, beta.len, d);
        assert_eq!(dy.len, x.len, "group_norm_backward: dy length");
        assert_eq!(stats.len, d.n * d.groups * 2, "group_norm_backward: stats");
        self.norm_backward(
            x,
            stats,
            gamma,
            beta,
            dy,
            d.n * d.groups,
            (d.c, d.hw, d.groups),
            silu,
        )
    }

    fn layer_norm(
        &self,
        x: &CudaBuf,
        rows: usize,
        dim: usize,
        eps: f32,
        gamma: &CudaBuf,
        beta: &CudaBuf,
    ) -> (CudaBuf, CudaBuf) {
        assert_eq!(x.len, rows * dim, "layer_norm: x length");
        assert_eq!(gamma.len, dim, "layer_norm: gamma");
        assert_eq!(beta.len, dim, "layer_norm: beta");
        // A row of x [rows, dim] is one group of `dim` channels with one value each.
        self.norm_forward(x, gamma, beta, rows, dim, 1, 1, eps, false)
    }

    fn layer_norm_backward(
        &self,
        x: &CudaBuf,
        stats: &CudaBuf,
        gamma: &CudaBuf,
        dy: &CudaBuf,
        rows: usize,
        dim: usize,
    ) -> CudaBuf {
        assert_eq!(x.len, rows * dim, "layer_norm_backward: x length");
        assert_eq!(dy.len, x.len, "layer_norm_backward: dy length");
        assert_eq!(stats.len, rows * 2, "layer_norm_backward: stats");
        assert_eq!(gamma.len, dim, "layer_norm_backward: gamma");
        // beta only enters the fused-SiLU derivative, which layer norm does not use.
        self.norm_backward(x, stats, gamma, gamma, dy, rows, (dim, 1, 1), false)
    }

    fn conv2d(&self, x: &CudaBuf, w: &CudaBuf, bias: Option<&CudaBuf>, g: &ConvGeom) -> CudaBuf {
        self.conv2d_impl(x, w, bias, g)
    }

    fn conv2d_backward_input(&self, dy: &CudaBuf, w: &CudaBuf, g: &ConvGeom) -> CudaBuf {
        self.conv2d_backward_input_impl(dy, w, g)
    }

    fn resize_nearest(
        &self,
        x: &CudaBuf,
        nc: usize,
        hw: (usize, usize),
        out_hw: (usize, usize),
    ) -> CudaBuf {
        assert_eq!(x.len, nc * hw.0 * hw.1, "resize_nearest: length");
        let n = nc * out_hw.0 * out_hw.1;
        let mut y = self.alloc(n);
        if n > 0 {
            assert!(hw.0 > 0 && hw.1 > 0, "resize_nearest: empty input plane");
            let (ih, iw) = (int(hw.0, "height"), int(hw.1, "width"));
            let (oh, ow) = (int(out_hw.0, "height"), int(out_hw.1, "width"));
            let n64 = n as u64;
            launch!(
                self,
                "k_resize_nearest",
                elems(n),
                [&x.data, &mut y.data, &ih, &iw, &oh, &ow, &n64]
            );
        }
        y
    }

    fn resize_nearest_backward(
        &self,
        dy: &CudaBuf,
        nc: usize,
        hw: (usize, usize),
        out_hw: (usize, usize),
    ) -> CudaBuf {
        assert_eq!(
            dy.len,
            nc * out_hw.0 * out_hw.1,
            "resize_nearest_backward: length"
        );
        let n = nc * hw.0 * hw.1;
        let mut dx = self.alloc(n);
        if n > 0 {
            let (ih, iw) = (int(hw.0, "height"), int(hw.1, "width"));
            let (oh, ow) = (int(out_hw.0, "height"), int(out_hw.1, "width"));
            let n64 = n as u64;
            launch!(
                self,
                "k_resize_nearest_backward",
                elems(n),
                [&dy.data, &mut dx.data, &ih, &iw, &oh, &ow, &n64]
            );
        }
        dx
    }

    fn attention(&self, q: &CudaBuf, k: &CudaBuf, v: &CudaBuf, d: &AttnDims) -> (CudaBuf, CudaBuf) {
        self.attention_forward(q, k, v, d)
    }

    fn attention_backward(
        &self,
        q: &CudaBuf,
        k: &CudaBuf,
        v: &CudaBuf,
        o: &CudaBuf,
        lse: &CudaBuf,
        d_o: &CudaBuf,
        d: &AttnDims,
    ) -> (CudaBuf, CudaBuf, CudaBuf) {
        self.attention_backward_impl(q, k, v, o, lse, d_o, d)
    }
}

fn check_gn(len: usize, gamma: usize, beta: usize, d: &GroupNormDims) {
    assert!(
        d.groups > 0 && d.c.is_multiple_of(d.groups),
        "group_norm: {} channels in {} groups",
        d.c,
        d.groups
    );
    assert_eq!(len, d.n * d.c * d.hw, "group_norm: x length");
    assert_eq!(gamma, d.c, "group_norm: gamma length");
    assert_eq!(beta, d.c, "group_norm: beta length");
}

impl Cuda {
    /// Group norm over `blocks` contiguous blocks of `c/groups · hw` values (see `k_group_norm`).
    #[allow(clippy::too_many_arguments)]
    fn norm_forward(
        &self,
        x: &CudaBuf,
        gamma: &CudaBuf,
        beta: &CudaBuf,
        blocks: usize,
        c: usize,
        hw: usize,
        groups: usize,
        eps: f32,
        silu: bool,
    ) -> (CudaBuf, CudaBuf) {
        let mut y = self.alloc(x.len);
        let mut stats = self.alloc(blocks * 2);
        if x.len == 0 || blocks == 0 {
            return (y, stats);
        }
        let (c64, hw64, g64, s) = (c as u64, hw as u64, groups as u64, silu as i32);
        launch!(
            self,
            "k_group_norm",
            rows_cfg(blocks),
            [
                &x.data,
                &gamma.data,
                &beta.data,
                &mut y.data,
                &mut stats.data,
                &c64,
                &hw64,
                &g64,
                &eps,
                &s
            ]
        );
        (y, stats)
    }

    #[allow(clippy::too_many_arguments)]
    fn norm_backward(
        &self,
        x: &CudaBuf,
        stats: &CudaBuf,
        gamma: &CudaBuf,
        beta: &CudaBuf,
        dy: &CudaBuf,
        blocks: usize,
        (c, hw, groups): (usize, usize, usize),
        silu: bool,
    ) -> CudaBuf {
        let mut dx = self.alloc(x.len);
        if x.len == 0 || blocks == 0 {
            return dx;
        }
        let (c64, hw64, g64, s) = (c as u64, hw as u64, groups as u64, silu as i32);
        launch!(
            self,
            "k_group_norm_backward",
            rows_cfg(blocks),
            [
                &x.data,
                &stats.data,
                &gamma.data,
                &beta.data,
                &dy.data,
                &mut dx.data,
                &c64,
                &hw64,
                &g64,
                &s
            ]
        );
        dx
    }
}
