//! The C ABI called as C would call it, from Rust: every error path (NULL, bad UTF-8, bad sizes,
//! wrong option versions, cancelled handles, wrong handle kinds), the panic boundary, ownership
//! rules, and generation through the ABI matching `Engine::generate` pixel for pixel.

mod common;

use common::*;
use dpoimg::ffi::*;
use std::ffi::{c_char, c_void, CStr, CString};
use std::ptr::{null, null_mut};
use std::sync::{Mutex, OnceLock};

fn cstr(s: &str) -> CString {
    CString::new(s).unwrap()
}

fn last_error() -> String {
    unsafe { CStr::from_ptr(dpoimg_last_error()) }
        .to_string_lossy()
        .into_owned()
}

/// Asserts a status and that the thread's last error mentions `needle`.
fn expect(status: dpoimg_status, want: dpoimg_status, needle: &str) {
    let name = |s| unsafe { CStr::from_ptr(dpoimg_status_name(s)) }.to_string_lossy();
    assert_eq!(
        status,
        want,
        "got {} ({}), want {}",
        name(status),
        last_error(),
        name(want)
    );
    if want != DPOIMG_OK {
        let msg = last_error();
        assert!(msg.contains(needle), "last error {msg:?} lacks {needle:?}");
    }
}

struct Shared(*mut dpoimg_engine);
// SAFETY: the engine is documented thread-safe; tests never close the shared one.
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

/// One engine for the whole test binary (opening is the slow part).
fn engine() -> *mut dpoimg_engine {
    static E: OnceLock<Shared> = OnceLock::new();
    E.get_or_init(|| Shared(open_engine().expect("tiny bundle opens")))
        .0
}

fn open_engine() -> Result<*mut dpoimg_engine, String> {
    let dir = cstr(bundle_dir().to_str().unwrap());
    let mut o = dpoimg_engine_options::default();
    unsafe { dpoimg_engine_options_init(&mut o, DPOIMG_ENGINE_OPTIONS_VERSION) };
    let device = cstr("cpu");
    o.device = device.as_ptr();
    o.verify = false;
    o.intra_threads = 1;
    let mut e = null_mut();
    match unsafe { dpoimg_engine_open(dir.as_ptr(), &o, &mut e) } {
        DPOIMG_OK => Ok(e),
        _ => Err(last_error()),
    }
}

fn options(prompt: &CStr) -> dpoimg_generate_options {
    let mut o = unsafe { std::mem::zeroed::<dpoimg_generate_options>() };
    assert_eq!(
        unsafe { dpoimg_generate_options_init(&mut o, DPOIMG_GENERATE_OPTIONS_VERSION) },
        DPOIMG_OK
    );
    o.prompt = prompt.as_ptr();
    o.steps = 2;
    o
}

/// A pointer value that must survive a failing call untouched.
fn sentinel<T>() -> *mut T {
    0x1 as *mut T
}

#[test]
fn version_function_equals_cargo_and_header_macros() {
    let v = unsafe { CStr::from_ptr(dpoimg_version()) }
        .to_str()
        .unwrap();
    assert_eq!(v, env!("CARGO_PKG_VERSION"));
    let header = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("include/dpoimg.h"),
    )
    .expect("include/dpoimg.h exists (build.rs generates it)");
    let mac = |name: &str| -> String {
        let prefix = format!("#define {name} ");
        header
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("{name} missing from the header"))
            .trim()
            .trim_matches('"')
            .to_string()
    };
    assert_eq!(
        format!(
            "{}.{}.{}",
            mac("DPOIMG_VERSION_MAJOR"),
            mac("DPOIMG_VERSION_MINOR"),
            mac("DPOIMG_VERSION_PATCH")
        ),
        v
    );
    assert_eq!(mac("DPOIMG_VERSION_STRING"), v);
    assert_eq!(
        mac("DPOIMG_VERSION_NUMBER").parse::<u32>().unwrap(),
        dpoimg_version_number()
    );
}

#[test]
fn status_names_are_stable() {
    let name = |s| {
        unsafe { CStr::from_ptr(dpoimg_status_name(s)) }
            .to_str()
            .unwrap()
    };
    assert_eq!(name(DPOIMG_OK), "DPOIMG_OK");
    assert_eq!(name(DPOIMG_ERR_MISUSE), "DPOIMG_ERR_MISUSE");
    assert_eq!(name(DPOIMG_ERR_PANIC), "DPOIMG_ERR_PANIC");
    assert_eq!(name(12345), "DPOIMG_ERR_UNKNOWN");
}

#[test]
fn options_init_checks_null_and_version() {
    unsafe {
        expect(
            dpoimg_engine_options_init(null_mut(), DPOIMG_ENGINE_OPTIONS_VERSION),
            DPOIMG_ERR_MISUSE,
            "options",
        );
        let mut o = std::mem::zeroed::<dpoimg_engine_options>();
        expect(
            dpoimg_engine_options_init(&mut o, 0),
            DPOIMG_ERR_VERSION,
            "version 0",
        );
        expect(
            dpoimg_engine_options_init(&mut o, DPOIMG_ENGINE_OPTIONS_VERSION + 1),
            DPOIMG_ERR_VERSION,
            "not supported",
        );
        assert_eq!(o.version, 0, "untouched on failure");
        expect(
            dpoimg_engine_options_init(&mut o, DPOIMG_ENGINE_OPTIONS_VERSION),
            DPOIMG_OK,
            "",
        );
        assert_eq!(o.version, DPOIMG_ENGINE_OPTIONS_VERSION);
        assert!(o.verify);
        let mut g = std::mem::zeroed::<dpoimg_generate_options>();
        expect(
            dpoimg_generate_options_init(&mut g, 7),
            DPOIMG_ERR_VERSION,
            "7",
        );
        expect(
            dpoimg_generate_options_init(&mut g, DPOIMG_GENERATE_OPTIONS_VERSION),
            DPOIMG_OK,
            "",
        );
        assert_eq!((g.count, g.steps, g.guidance), (1, 0, -1.0));
    }
}

#[test]
fn engine_open_error_paths_leave_output_untouched() {
    let dir = cstr(bundle_dir().to_str().unwrap());
    let mut out: *mut dpoimg_engine = sentinel();
    unsafe {
        expect(
            dpoimg_engine_open(null(), null(), &mut out),
            DPOIMG_ERR_MISUSE,
            "bundle_dir",
        );
        expect(
            dpoimg_engine_open(dir.as_ptr(), null(), null_mut()),
            DPOIMG_ERR_MISUSE,
            "out_engine",
        );
        let bad_utf8 = [0x66u8, 0xff, 0xfe, 0];
        expect(
            dpoimg_engine_open(bad_utf8.as_ptr().cast(), null(), &mut out),
            DPOIMG_ERR_INVALID_ARGUMENT,
            "UTF-8",
        );
        let missing = cstr("/nonexistent/bundle");
        expect(
            dpoimg_engine_open(missing.as_ptr(), null(), &mut out),
            DPOIMG_ERR_BUNDLE,
            "bundle.json",
        );
        let o = dpoimg_engine_options {
            version: 99,
            ..Default::default()
        };
        expect(
            dpoimg_engine_open(dir.as_ptr(), &o, &mut out),
            DPOIMG_ERR_VERSION,
            "99",
        );
        let dev = cstr("tpu");
        let o = dpoimg_engine_options {
            device: dev.as_ptr(),
            ..Default::default()
        };
        expect(
            dpoimg_engine_open(dir.as_ptr(), &o, &mut out),
            DPOIMG_ERR_INVALID_ARGUMENT,
            "unknown device",
        );
    }
    assert_eq!(out, sentinel(), "out_engine written on failure");
}

#[test]
fn generate_error_paths() {
    let e = engine();
    let prompt = cstr("a red circle");
    let mut out: *mut dpoimg_images = sentinel();
    unsafe {
        let o = options(&prompt);
        expect(
            dpoimg_generate(null(), &o, &mut out),
            DPOIMG_ERR_MISUSE,
            "NULL",
        );
        expect(
            dpoimg_generate(e, null(), &mut out),
            DPOIMG_ERR_MISUSE,
            "options",
        );
        expect(
            dpoimg_generate(e, &o, null_mut()),
            DPOIMG_ERR_MISUSE,
            "out_images",
        );

        let mut bad = o;
        bad.version = 0;
        expect(
            dpoimg_generate(e, &bad, &mut out),
            DPOIMG_ERR_VERSION,
            "version 0",
        );
        bad.version = 2;
        expect(
            dpoimg_generate(e, &bad, &mut out),
            DPOIMG_ERR_VERSION,
            "version 2",
        );

        let mut bad = o;
        bad.prompt = null();
        expect(
            dpoimg_generate(e, &bad, &mut out),
            DPOIMG_ERR_MISUSE,
            "prompt",
        );
        let invalid = [b'a', 0xc3, 0x28, 0];
        bad.prompt = invalid.as_ptr().cast();
        expect(
            dpoimg_generate(e, &bad, &mut out),
            DPOIMG_ERR_INVALID_ARGUMENT,
            "prompt",
        );
        let mut bad = o;
        bad.negative_prompt = invalid.as_ptr().cast();
        expect(
            dpoimg_generate(e, &bad, &mut out),
            DPOIMG_ERR_INVALID_ARGUMENT,
            "negative_prompt",
        );

        let mut bad = o;
        let sampler = cstr("heun");
        bad.sampler = sampler.as_ptr();
        expect(
            dpoimg_generate(e, &bad, &mut out),
            DPOIMG_ERR_INVALID_ARGUMENT,
            "sampler",
        );
        let mut bad = o;
        bad.width = 17;
        expect(
            dpoimg_generate(e, &bad, &mut out),
            DPOIMG_ERR_INVALID_ARGUMENT,
            "width",
        );
        let mut bad = o;
        bad.count = 17;
        expect(
            dpoimg_generate(e, &bad, &mut out),
            DPOIMG_ERR_INVALID_ARGUMENT,
            "count",
        );
        let mut bad = o;
        bad.guidance = f32::NAN;
        expect(
            dpoimg_generate(e, &bad, &mut out),
            DPOIMG_ERR_INVALID_ARGUMENT,
            "guidance",
        );
        let mut bad = o;
        bad.steps = 5000;
        expect(
            dpoimg_generate(e, &bad, &mut out),
            DPOIMG_ERR_INVALID_ARGUMENT,
            "steps",
        );

        // Sizes: a wild count is refused before any slice is formed; NULL with a count is misuse.
        let mut bad = o;
        bad.adapter_count = usize::MAX;
        expect(
            dpoimg_generate(e, &bad, &mut out),
            DPOIMG_ERR_INVALID_ARGUMENT,
            "adapters",
        );
        bad.adapter_count = 1;
        expect(
            dpoimg_generate(e, &bad, &mut out),
            DPOIMG_ERR_MISUSE,
            "adapters",
        );
        let name = cstr("never-loaded");
        let refs = [dpoimg_adapter_ref {
            adapter: null(),
            name: name.as_ptr(),
            strength: 1.0,
        }];
        bad.adapters = refs.as_ptr();
        expect(
            dpoimg_generate(e, &bad, &mut out),
            DPOIMG_ERR_NOT_FOUND,
            "never-loaded",
        );
        let neither = [dpoimg_adapter_ref {
            adapter: null(),
            name: null(),
            strength: 1.0,
        }];
        bad.adapters = neither.as_ptr();
        expect(
            dpoimg_generate(e, &bad, &mut out),
            DPOIMG_ERR_MISUSE,
            "exactly one",
        );

        // A handle of the wrong kind is misuse, not a crash.
        let mut c = null_mut();
        assert_eq!(dpoimg_cancel_new(&mut c), DPOIMG_OK);
        expect(
            dpoimg_generate(c.cast::<dpoimg_engine>(), &o, &mut out),
            DPOIMG_ERR_MISUSE,
            "dpoimg_engine",
        );

        // Use after cancel: a cancelled handle makes the call return at once, every time.
        let mut co = o;
        co.cancel = c;
        assert_eq!(dpoimg_cancel_request(c), DPOIMG_OK);
        assert!(dpoimg_cancel_is_requested(c));
        expect(
            dpoimg_generate(e, &co, &mut out),
            DPOIMG_ERR_CANCELLED,
            "cancelled",
        );
        expect(
            dpoimg_generate(e, &co, &mut out),
            DPOIMG_ERR_CANCELLED,
            "cancelled",
        );
        dpoimg_cancel_free(c);
    }
    assert_eq!(out, sentinel(), "out_images written on failure");

    // The engine keeps its own copy of the last error, readable snprintf-style.
    let mut buf = [0 as c_char; 8];
    let n = unsafe { dpoimg_engine_last_error(e, buf.as_mut_ptr(), buf.len()) };
    assert!(n > 7, "full length returned");
    let got = unsafe { CStr::from_ptr(buf.as_ptr()) }.to_bytes().len();
    assert_eq!(got, 7, "truncated with a NUL");
    assert_eq!(unsafe { dpoimg_engine_last_error(e, null_mut(), 0) }, n);
}

unsafe extern "C" fn stop_at_step_one(ud: *mut c_void, p: *const dpoimg_progress) -> bool {
    let seen = &mut *ud.cast::<Vec<(i32, u32)>>();
    seen.push(((*p).stage, (*p).step));
    !((*p).stage == DPOIMG_STAGE_DENOISING && (*p).step == 1)
}

#[test]
fn progress_returning_false_cancels() {
    let prompt = cstr("stop early");
    let mut o = options(&prompt);
    let mut seen: Vec<(i32, u32)> = Vec::new();
    o.progress = Some(stop_at_step_one);
    o.progress_userdata = (&mut seen as *mut Vec<(i32, u32)>).cast();
    let mut out = null_mut();
    unsafe {
        expect(
            dpoimg_generate(engine(), &o, &mut out),
            DPOIMG_ERR_CANCELLED,
            "cancelled",
        )
    };
    assert!(out.is_null());
    assert_eq!(
        seen,
        vec![
            (DPOIMG_STAGE_ENCODING_PROMPT, 0),
            (DPOIMG_STAGE_DENOISING, 0),
            (DPOIMG_STAGE_DENOISING, 1)
        ]
    );
}

#[test]
fn generate_through_the_abi_equals_the_library() {
    let e = engine();
    let prompt = cstr("a red circle above a blue square 🐱");
    let negative = cstr("blurry");
    let sampler = cstr("euler-a");
    let mut o = options(&prompt);
    o.negative_prompt = negative.as_ptr();
    o.sampler = sampler.as_ptr();
    o.seed = 1234;
    o.steps = 3;
    o.count = 2;
    let mut images = null_mut();
    unsafe { expect(dpoimg_generate(e, &o, &mut images), DPOIMG_OK, "") };
    assert_eq!(unsafe { dpoimg_images_count(images) }, 2);

    let lib = dpoimg::Engine::open(
        bundle_dir(),
        &dpoimg::EngineOptions {
            verify: dpoimg::bundle::Verify::Quick,
            ..Default::default()
        },
    )
    .unwrap();
    let mut req = dpoimg::GenerateRequest::new("a red circle above a blue square 🐱");
    req.negative_prompt = "blurry".into();
    req.sampler = Some("euler-a".parse().unwrap());
    req.seed = 1234;
    req.steps = Some(3);
    req.count = 2;
    let want = lib
        .generate(&req, &mut |_| true, &dpoimg::CancelToken::new())
        .unwrap();
    for (i, w) in want.images.iter().enumerate() {
        let mut img: *const dpoimg_image = null();
        unsafe { expect(dpoimg_images_get(images, i, &mut img), DPOIMG_OK, "") };
        let img = unsafe { &*img };
        assert_eq!((img.width, img.height, img.stride), (16, 16, 48));
        let px = unsafe { std::slice::from_raw_parts(img.data, img.len) };
        assert_eq!(
            px,
            w.rgb.as_slice(),
            "image {i} differs from Engine::generate"
        );
    }
    let mut img: *const dpoimg_image = sentinel::<dpoimg_image>();
    unsafe {
        expect(
            dpoimg_images_get(images, 2, &mut img),
            DPOIMG_ERR_INVALID_ARGUMENT,
            "out of range",
        );
        expect(
            dpoimg_images_get(images, 0, null_mut()),
            DPOIMG_ERR_MISUSE,
            "out_image",
        );
    }
    assert_eq!(img, sentinel::<dpoimg_image>());

    let mut png = null_mut();
    unsafe { expect(dpoimg_images_encode_png(images, 1, &mut png), DPOIMG_OK, "") };
    let bytes = unsafe { std::slice::from_raw_parts((*png).data, (*png).len) };
    let text = dpoimg::provenance::read_png_text(bytes).unwrap();
    let get = |k: &str| {
        text.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(get("seed").as_deref(), Some("1234"));
    assert_eq!(get("batch_index").as_deref(), Some("1"));
    assert_eq!(get("negative_prompt").as_deref(), Some("blurry"));
    assert_eq!(get("sampler").as_deref(), Some("euler-a"));
    unsafe {
        dpoimg_bytes_free(png);
        dpoimg_images_free(images);
    }
}

#[test]
fn adapters_load_list_unload_and_generate_by_handle_or_name() {
    let e = engine();
    let path = cstr(assets().join("adapters/r4.safetensors").to_str().unwrap());
    let name = cstr("ffi-test-r4");
    let mut a: *const dpoimg_adapter = null();
    unsafe {
        expect(
            dpoimg_engine_adapter_load(e, path.as_ptr(), name.as_ptr(), &mut a),
            DPOIMG_OK,
            "",
        );
        expect(
            dpoimg_engine_adapter_load(e, path.as_ptr(), name.as_ptr(), null_mut()),
            DPOIMG_ERR_EXISTS,
            "already loaded",
        );
        let bad = cstr(assets().join("tiny-bundle/bundle.json").to_str().unwrap());
        expect(
            dpoimg_engine_adapter_load(e, bad.as_ptr(), null(), null_mut()),
            DPOIMG_ERR_ADAPTER,
            "safetensors",
        );
        expect(
            dpoimg_engine_adapter_load(e, null(), null(), null_mut()),
            DPOIMG_ERR_MISUSE,
            "path",
        );
        let empty = cstr("");
        expect(
            dpoimg_engine_adapter_load(e, path.as_ptr(), empty.as_ptr(), null_mut()),
            DPOIMG_ERR_INVALID_ARGUMENT,
            "empty",
        );

        let mut info: *const dpoimg_adapter_info = null();
        expect(dpoimg_adapter_get_info(a, &mut info), DPOIMG_OK, "");
        let info = &*info;
        assert_eq!(CStr::from_ptr(info.name).to_str().unwrap(), "ffi-test-r4");
        assert_eq!(info.rank, 4);
        assert_eq!(CStr::from_ptr(info.sha256).to_bytes().len(), 64);

        let mut list = null_mut();
        expect(dpoimg_engine_adapter_list(e, &mut list), DPOIMG_OK, "");
        let names: Vec<String> = (0..dpoimg_adapter_list_count(list))
            .map(|i| {
                let mut h = null();
                assert_eq!(dpoimg_adapter_list_get(list, i, &mut h), DPOIMG_OK);
                let mut inf = null();
                assert_eq!(dpoimg_adapter_get_info(h, &mut inf), DPOIMG_OK);
                CStr::from_ptr((*inf).name).to_string_lossy().into_owned()
            })
            .collect();
        assert!(names.contains(&"ffi-test-r4".to_string()), "{names:?}");
        let mut h = null();
        expect(
            dpoimg_adapter_list_get(list, 999, &mut h),
            DPOIMG_ERR_INVALID_ARGUMENT,
            "out of range",
        );
        dpoimg_adapter_list_free(list);

        // By name and by handle: the same pixels; strength 0 equals the base model.
        let prompt = cstr("adapter test");
        let run = |r: dpoimg_adapter_ref| -> Vec<u8> {
            let mut o = options(&prompt);
            o.adapters = &r;
            o.adapter_count = 1;
            let mut im = null_mut();
            expect(dpoimg_generate(e, &o, &mut im), DPOIMG_OK, "");
            let mut img = null();
            assert_eq!(dpoimg_images_get(im, 0, &mut img), DPOIMG_OK);
            let v = std::slice::from_raw_parts((*img).data, (*img).len).to_vec();
            dpoimg_images_free(im);
            v
        };
        let by_name = run(dpoimg_adapter_ref {
            adapter: null(),
            name: name.as_ptr(),
            strength: 0.8,
        });
        let by_handle = run(dpoimg_adapter_ref {
            adapter: a,
            name: null(),
            strength: 0.8,
        });
        assert_eq!(by_name, by_handle);
        let off = run(dpoimg_adapter_ref {
            adapter: a,
            name: null(),
            strength: 0.0,
        });
        let mut o = options(&prompt);
        let mut im = null_mut();
        expect(dpoimg_generate(e, &o, &mut im), DPOIMG_OK, "");
        let mut img = null();
        dpoimg_images_get(im, 0, &mut img);
        assert_eq!(off, std::slice::from_raw_parts((*img).data, (*img).len));
        assert_ne!(off, by_name, "the adapter changes the image");
        dpoimg_images_free(im);

        expect(
            dpoimg_engine_adapter_unload(e, name.as_ptr()),
            DPOIMG_OK,
            "",
        );
        expect(
            dpoimg_engine_adapter_unload(e, name.as_ptr()),
            DPOIMG_ERR_NOT_FOUND,
            "ffi-test-r4",
        );
        // The handle outlives the unload.
        let again = run(dpoimg_adapter_ref {
            adapter: a,
            name: null(),
            strength: 0.8,
        });
        assert_eq!(again, by_handle);
        let refs = [dpoimg_adapter_ref {
            adapter: a,
            name: name.as_ptr(),
            strength: 1.0,
        }];
        o.adapters = refs.as_ptr();
        o.adapter_count = 1;
        expect(
            dpoimg_generate(e, &o, &mut im),
            DPOIMG_ERR_MISUSE,
            "exactly one",
        );
        dpoimg_adapter_free(a);
    }
}

#[test]
fn panic_becomes_a_status_and_the_library_stays_usable() {
    let m = cstr("forced by the test");
    let s = unsafe { dpoimg_debug_panic(m.as_ptr()) };
    expect(s, DPOIMG_ERR_PANIC, "forced by the test");
    let s = unsafe { dpoimg_debug_panic(null()) };
    expect(s, DPOIMG_ERR_PANIC, "dpoimg_debug_panic");
    let mut c = null_mut();
    assert_eq!(unsafe { dpoimg_cancel_new(&mut c) }, DPOIMG_OK);
    unsafe { dpoimg_cancel_free(c) };
}

#[test]
fn freeing_null_is_a_no_op() {
    unsafe {
        dpoimg_engine_close(null_mut());
        dpoimg_images_free(null_mut());
        dpoimg_bytes_free(null_mut());
        dpoimg_adapter_free(null());
        dpoimg_adapter_list_free(null_mut());
        dpoimg_cancel_free(null_mut());
        assert_eq!(dpoimg_images_count(null()), 0);
        assert_eq!(dpoimg_adapter_list_count(null()), 0);
        assert!(!dpoimg_cancel_is_requested(null()));
        expect(dpoimg_cancel_request(null()), DPOIMG_ERR_MISUSE, "NULL");
        expect(
            dpoimg_images_encode_png(null(), 0, null_mut()),
            DPOIMG_ERR_MISUSE,
            "NULL",
        );
    }
}

static LOG: Mutex<Vec<(i32, String)>> = Mutex::new(Vec::new());

unsafe extern "C" fn collect(ud: *mut c_void, level: i32, message: *const c_char) {
    assert_eq!(ud as usize, 0x5eed);
    let m = CStr::from_ptr(message).to_string_lossy().into_owned();
    LOG.lock().unwrap().push((level, m));
}

unsafe extern "C" fn reenter(_: *mut c_void, _: i32, _: *const c_char) {
    let s = dpoimg_log_set_callback(None, null_mut(), 0);
    LOG.lock().unwrap().push((s, "reentered".into()));
}

#[test]
fn log_callback_receives_tracing_events() {
    unsafe {
        expect(
            dpoimg_log_set_callback(Some(collect), 0x5eed as *mut c_void, DPOIMG_LOG_INFO),
            DPOIMG_OK,
            "",
        );
        tracing::info!(answer = 42, "hello from the test");
        tracing::debug!("below the level");
        expect(dpoimg_log_set_callback(None, null_mut(), 0), DPOIMG_OK, "");
        tracing::info!("after removal");
        let got = LOG.lock().unwrap().clone();
        assert!(
            got.iter()
                .any(|(l, m)| *l == DPOIMG_LOG_INFO && m.contains("hello from the test answer=42")),
            "{got:?}"
        );
        assert!(!got.iter().any(|(_, m)| m.contains("below the level")));
        assert!(!got.iter().any(|(_, m)| m.contains("after removal")));

        // Setting the callback from inside the callback is refused, not a deadlock.
        LOG.lock().unwrap().clear();
        dpoimg_log_set_callback(Some(reenter), null_mut(), DPOIMG_LOG_ERROR);
        tracing::error!("trigger");
        dpoimg_log_set_callback(None, null_mut(), 0);
        let got = LOG.lock().unwrap().clone();
        assert!(!got.is_empty());
        assert!(
            got.iter()
                .all(|(s, m)| *s == DPOIMG_ERR_MISUSE && m == "reentered"),
            "{got:?}"
        );
    }
}
