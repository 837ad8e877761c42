package dpoimg

/*
#include <stdlib.h>
#include <string.h>
#include <dpoimg.h>
*/
import "C"

import (
	"sync"
	"unsafe"
)

// Reward is an opened reward bundle (ImageReward format). Safe for concurrent use; Close waits
// for calls in flight.
type Reward struct {
	mu  sync.RWMutex
	ptr *C.dpoimg_reward
}

// OpenReward loads the reward bundle in directory dir. opts (device, threads, verification,
// ONNX Runtime library) may be nil.
func OpenReward(dir string, opts *EngineOptions) (*Reward, error) {
	o, free, err := cEngineOptions(opts)
	if err != nil {
		return nil, err
	}
	defer free()
	cdir, freeDir := cstring(dir, false)
	defer freeDir()
	r := &Reward{}
	if err := call(func() C.dpoimg_status { return C.dpoimg_reward_open(cdir, &o, &r.ptr) }); err != nil {
		return nil, err
	}
	return r, nil
}

// Score returns one normalised reward per image for prompt.
func (r *Reward) Score(prompt string, images []Image) ([]float32, error) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if r.ptr == nil {
		return nil, &Error{Status: StatusMisuse, Message: "reward is closed"}
	}
	if len(images) == 0 {
		return nil, &Error{Status: StatusInvalidArgument, Message: "no images"}
	}
	cp, freePrompt := cstring(prompt, false)
	defer freePrompt()
	// C memory throughout: cgo forbids passing C an array of structs that point into Go memory.
	n := len(images)
	views := (*[1 << 20]C.dpoimg_image)(C.malloc(C.size_t(n) * C.size_t(unsafe.Sizeof(C.dpoimg_image{}))))[:n:n]
	defer C.free(unsafe.Pointer(&views[0]))
	for i, im := range images {
		var data unsafe.Pointer
		if len(im.Pix) > 0 {
			data = C.CBytes(im.Pix)
			defer C.free(data)
		}
		views[i] = C.dpoimg_image{
			width:  C.uint32_t(im.Width),
			height: C.uint32_t(im.Height),
			stride: C.size_t(im.Stride),
			data:   (*C.uint8_t)(data),
			len:    C.size_t(len(im.Pix)),
		}
	}
	scores := make([]float32, n)
	out := (*C.float)(C.malloc(C.size_t(n) * 4))
	defer C.free(unsafe.Pointer(out))
	if err := call(func() C.dpoimg_status {
		return C.dpoimg_reward_score(r.ptr, cp, &views[0], C.size_t(n), out)
	}); err != nil {
		return nil, err
	}
	copy(scores, (*[1 << 20]float32)(unsafe.Pointer(out))[:n:n])
	return scores, nil
}

// Close frees the reward model after calls in flight return. Closing twice is a no-op.
func (r *Reward) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	C.dpoimg_reward_close(r.ptr)
	r.ptr = nil
	return nil
}
