package dpoimg

/*
#include <stdint.h>
#include <stdlib.h>
#include <dpoimg.h>

// dpoimgGoProgress is exported from callbacks.go; this trampoline has the header's signature.
extern _Bool dpoimgGoProgress(void *userdata, dpoimg_progress *progress);
static bool dpoimg_go_progress_trampoline(void *userdata, const dpoimg_progress *progress) {
	return dpoimgGoProgress(userdata, (dpoimg_progress *)progress);
}
// A cgo.Handle is an integer; it travels through C as the userdata pointer.
static void dpoimg_go_set_progress(dpoimg_generate_options *o, uintptr_t handle) {
	o->progress = dpoimg_go_progress_trampoline;
	o->progress_userdata = (void *)handle;
}
*/
import "C"

import (
	"context"
	"runtime/cgo"
	"unsafe"
)

// Stage is what a generation is doing.
type Stage int32

// Generation stages, as in dpoimg.h.
const (
	StageEncodingPrompt Stage = C.DPOIMG_STAGE_ENCODING_PROMPT
	StageDenoising      Stage = C.DPOIMG_STAGE_DENOISING
	StageDecoding       Stage = C.DPOIMG_STAGE_DECODING
)

// Progress is one progress report.
type Progress struct {
	Stage      Stage
	Step       int // denoising steps completed
	TotalSteps int
}

// AdapterRef applies an adapter to a generation: set Adapter, or Name (loaded on the engine).
type AdapterRef struct {
	Adapter  *Adapter
	Name     string
	Strength float32
}

// GenerateOptions is one text-to-image request. Zero values mean the bundle's defaults.
type GenerateOptions struct {
	Prompt         string
	NegativePrompt string
	Seed           uint64
	Steps          int     // 0 = default
	Guidance       float32 // 0 = default; <= 1 runs the conditional branch alone
	Sampler        string  // "" = default; ddim, ddpm, euler, euler-a, dpmpp-2m, dpmpp-2m-karras
	Eta            float64 // DDIM's eta
	Width, Height  int     // 0 = default
	Count          int     // images in the batch; 0 = 1
	Adapters       []AdapterRef
	// Progress, if set, is called on the generating goroutine; return false to stop.
	Progress func(Progress) bool
}

// Image is one generated image, copied into Go memory: 8-bit RGB rows, Stride bytes apart.
type Image struct {
	Width, Height, Stride int
	Pix                   []byte
}

// Images is the result of one Generate call. Close it when done.
type Images struct {
	ptr *C.dpoimg_images
}

// Generate makes opts.Count images. Cancelling ctx stops the run and returns ctx.Err().
func (e *Engine) Generate(ctx context.Context, opts GenerateOptions) (*Images, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var o C.dpoimg_generate_options
	if err := call(func() C.dpoimg_status {
		return C.dpoimg_generate_options_init(&o, C.DPOIMG_GENERATE_OPTIONS_VERSION)
	}); err != nil {
		return nil, err
	}
	var frees []func()
	defer func() {
		for _, f := range frees {
			f()
		}
	}()
	str := func(s string, nullEmpty bool) *C.char {
		p, free := cstring(s, nullEmpty)
		frees = append(frees, free)
		return p
	}
	o.prompt = str(opts.Prompt, false)
	o.negative_prompt = str(opts.NegativePrompt, true)
	o.sampler = str(opts.Sampler, true)
	o.seed = C.uint64_t(opts.Seed)
	o.steps = C.uint32_t(opts.Steps)
	if opts.Guidance != 0 {
		o.guidance = C.float(opts.Guidance)
	}
	o.eta = C.double(opts.Eta)
	o.width = C.uint32_t(opts.Width)
	o.height = C.uint32_t(opts.Height)
	if opts.Count > 0 {
		o.count = C.uint32_t(opts.Count)
	}
	if opts.Steps < 0 || opts.Width < 0 || opts.Height < 0 || opts.Count < 0 {
		return nil, &Error{Status: StatusInvalidArgument, Message: "steps, width, height and count must be >= 0"}
	}

	// The adapter array lives in C memory: cgo forbids passing Go memory that holds pointers.
	if n := len(opts.Adapters); n > 0 {
		size := C.size_t(unsafe.Sizeof(C.dpoimg_adapter_ref{})) * C.size_t(n)
		arr := (*C.dpoimg_adapter_ref)(C.calloc(1, size))
		frees = append(frees, func() { C.free(unsafe.Pointer(arr)) })
		refs := unsafe.Slice(arr, n)
		for i, r := range opts.Adapters {
			if r.Adapter != nil {
				// Hold the adapter open for the duration of the call.
				r.Adapter.mu.RLock()
				frees = append(frees, r.Adapter.mu.RUnlock)
				if r.Adapter.ptr == nil {
					return nil, &Error{Status: StatusMisuse, Message: "adapter is closed"}
				}
				refs[i].adapter = r.Adapter.ptr
			} else {
				refs[i].name = str(r.Name, false)
			}
			refs[i].strength = C.float(r.Strength)
		}
		o.adapters = arr
		o.adapter_count = C.size_t(n)
	}

	var progress *progressState
	if opts.Progress != nil {
		progress = &progressState{fn: opts.Progress}
		h := cgo.NewHandle(progress)
		frees = append(frees, h.Delete)
		C.dpoimg_go_set_progress(&o, C.uintptr_t(h))
	}

	// Cancellation: a watcher requests it when ctx ends; it has stopped before the handle is freed.
	var cancel *C.dpoimg_cancel
	if err := call(func() C.dpoimg_status { return C.dpoimg_cancel_new(&cancel) }); err != nil {
		return nil, err
	}
	o.cancel = cancel
	done := make(chan struct{})
	watcherDone := make(chan struct{})
	go func() {
		defer close(watcherDone)
		select {
		case <-ctx.Done():
			C.dpoimg_cancel_request(cancel)
		case <-done:
		}
	}()

	out := &Images{}
	err := e.use(func(ep *C.dpoimg_engine) error {
		return call(func() C.dpoimg_status { return C.dpoimg_generate(ep, &o, &out.ptr) })
	})
	close(done)
	<-watcherDone
	C.dpoimg_cancel_free(cancel)

	if progress != nil && progress.panicked != nil {
		out.Close()
		panic(progress.panicked)
	}
	if err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil && errorsIsCancelled(err) {
			return nil, ctxErr
		}
		return nil, err
	}
	return out, nil
}

func errorsIsCancelled(err error) bool {
	e, ok := err.(*Error)
	return ok && e.Status == StatusCancelled
}

// Len is the number of images.
func (im *Images) Len() int { return int(C.dpoimg_images_count(im.ptr)) }

// Image copies image i out of the library.
func (im *Images) Image(i int) (Image, error) {
	if i < 0 {
		return Image{}, &Error{Status: StatusInvalidArgument, Message: "negative image index"}
	}
	var img *C.dpoimg_image
	if err := call(func() C.dpoimg_status { return C.dpoimg_images_get(im.ptr, C.size_t(i), &img) }); err != nil {
		return Image{}, err
	}
	return Image{
		Width:  int(img.width),
		Height: int(img.height),
		Stride: int(img.stride),
		Pix:    C.GoBytes(unsafe.Pointer(img.data), C.int(img.len)),
	}, nil
}

// PNG encodes image i as a PNG file with its provenance (prompt, seed, settings, adapters).
func (im *Images) PNG(i int) ([]byte, error) {
	if i < 0 {
		return nil, &Error{Status: StatusInvalidArgument, Message: "negative image index"}
	}
	var b *C.dpoimg_bytes
	if err := call(func() C.dpoimg_status { return C.dpoimg_images_encode_png(im.ptr, C.size_t(i), &b) }); err != nil {
		return nil, err
	}
	defer C.dpoimg_bytes_free(b)
	return C.GoBytes(unsafe.Pointer(b.data), C.int(b.len)), nil
}

// Close frees the images. Closing twice is a no-op.
func (im *Images) Close() error {
	C.dpoimg_images_free(im.ptr)
	im.ptr = nil
	return nil
}
