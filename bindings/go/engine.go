package dpoimg

/*
#include <stdlib.h>
#include <dpoimg.h>
*/
import "C"

import "sync"

// EngineOptions say how to open an engine; the zero value means the library's defaults.
type EngineOptions struct {
	// Device is "auto" (default), "cpu", "cuda" or "cuda:N".
	Device string
	// IntraThreads and InterThreads size ONNX Runtime's thread pools; 0 = its default.
	IntraThreads, InterThreads int
	// SkipVerify skips the sha256 check of every bundle file (faster opening of large bundles).
	SkipVerify bool
	// ORTLibrary is the path of libonnxruntime; "" = the library's search.
	ORTLibrary string
}

// Engine is an opened model bundle. It is safe for concurrent use by any number of goroutines;
// Close waits for calls in flight.
type Engine struct {
	mu  sync.RWMutex
	ptr *C.dpoimg_engine
}

var errClosed = &Error{Status: StatusMisuse, Message: "engine is closed"}

// Open loads and checks the bundle in directory bundleDir. opts may be nil.
func Open(bundleDir string, opts *EngineOptions) (*Engine, error) {
	o, free, err := cEngineOptions(opts)
	if err != nil {
		return nil, err
	}
	defer free()
	dir, freeDir := cstring(bundleDir, false)
	defer freeDir()
	e := &Engine{}
	if err := call(func() C.dpoimg_status { return C.dpoimg_engine_open(dir, &o, &e.ptr) }); err != nil {
		return nil, err
	}
	return e, nil
}

// cEngineOptions fills the C options struct from opts (nil = defaults); call free after use.
func cEngineOptions(opts *EngineOptions) (C.dpoimg_engine_options, func(), error) {
	var o C.dpoimg_engine_options
	if opts == nil {
		opts = &EngineOptions{}
	}
	if opts.IntraThreads < 0 || opts.InterThreads < 0 {
		return o, nil, &Error{Status: StatusInvalidArgument, Message: "thread counts must be >= 0"}
	}
	if err := call(func() C.dpoimg_status {
		return C.dpoimg_engine_options_init(&o, C.DPOIMG_ENGINE_OPTIONS_VERSION)
	}); err != nil {
		return o, nil, err
	}
	device, freeDevice := cstring(opts.Device, true)
	ort, freeORT := cstring(opts.ORTLibrary, true)
	o.device = device
	o.ort_library = ort
	o.intra_threads = C.uint32_t(opts.IntraThreads)
	o.inter_threads = C.uint32_t(opts.InterThreads)
	o.verify = C.bool(!opts.SkipVerify)
	return o, func() { freeDevice(); freeORT() }, nil
}

// Close frees the engine after the calls in flight on it return. Closing twice is a no-op.
// Adapters, images and their data stay valid.
func (e *Engine) Close() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	C.dpoimg_engine_close(e.ptr)
	e.ptr = nil
	return nil
}

// use runs f with the engine's handle, holding it open.
func (e *Engine) use(f func(*C.dpoimg_engine) error) error {
	e.mu.RLock()
	defer e.mu.RUnlock()
	if e.ptr == nil {
		return errClosed
	}
	return f(e.ptr)
}
