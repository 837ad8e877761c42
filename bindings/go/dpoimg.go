// Package dpoimg is the Go binding of libdpoimg, an embeddable text-to-image diffusion engine.
//
// An Engine loads a model bundle once and serves any number of goroutines; every value that owns
// library memory has a Close method. Generation takes a context.Context: cancelling it stops the
// run between steps (or inside the model run in progress). Callbacks are passed to C through
// runtime/cgo.Handle, never through a global table.
//
// Build: the package links libdpoimg through pkg-config (`#cgo pkg-config: dpoimg`); install the
// library with scripts/install.sh PREFIX and set PKG_CONFIG_PATH=PREFIX/lib/pkgconfig (and
// LD_LIBRARY_PATH=PREFIX/lib, or install into a system prefix).
package dpoimg

/*
#cgo pkg-config: dpoimg
#include <stdlib.h>
#include <dpoimg.h>

*/
import "C"

import (
	"fmt"
	"runtime"
	"unsafe"
)

// Version is the library's version, "MAJOR.MINOR.PATCH".
func Version() string { return C.GoString(C.dpoimg_version()) }

// HeaderVersion is the version of the dpoimg.h this package was compiled against; it equals
// Version() unless the installed library and header disagree.
func HeaderVersion() string { return C.DPOIMG_VERSION_STRING }

// Status is a libdpoimg status code (0 = OK, negative = error).
type Status int32

// Status codes, as in dpoimg.h.
const (
	StatusOK              Status = C.DPOIMG_OK
	StatusMisuse          Status = C.DPOIMG_ERR_MISUSE
	StatusInvalidArgument Status = C.DPOIMG_ERR_INVALID_ARGUMENT
	StatusVersion         Status = C.DPOIMG_ERR_VERSION
	StatusCancelled       Status = C.DPOIMG_ERR_CANCELLED
	StatusNotFound        Status = C.DPOIMG_ERR_NOT_FOUND
	StatusExists          Status = C.DPOIMG_ERR_EXISTS
	StatusBundle          Status = C.DPOIMG_ERR_BUNDLE
	StatusRuntime         Status = C.DPOIMG_ERR_RUNTIME
	StatusAdapter         Status = C.DPOIMG_ERR_ADAPTER
	StatusModel           Status = C.DPOIMG_ERR_MODEL
	StatusIO              Status = C.DPOIMG_ERR_IO
	StatusPanic           Status = C.DPOIMG_ERR_PANIC
)

func (s Status) String() string { return C.GoString(C.dpoimg_status_name(C.dpoimg_status(s))) }

// Error is a failed libdpoimg call: its status and the library's message.
type Error struct {
	Status  Status
	Message string
}

func (e *Error) Error() string { return fmt.Sprintf("dpoimg: %s: %s", e.Status, e.Message) }

// Is makes errors.Is(err, dpoimg.ErrCancelled) (and the other sentinels) match by status.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Message == "" && t.Status == e.Status
}

// Sentinels for errors.Is.
var (
	ErrMisuse          = &Error{Status: StatusMisuse}
	ErrInvalidArgument = &Error{Status: StatusInvalidArgument}
	ErrCancelled       = &Error{Status: StatusCancelled}
	ErrNotFound        = &Error{Status: StatusNotFound}
	ErrExists          = &Error{Status: StatusExists}
	ErrBundle          = &Error{Status: StatusBundle}
	ErrAdapter         = &Error{Status: StatusAdapter}
)

// call runs one library call and turns a failure into an *Error. The last-error message is per OS
// thread, so the goroutine stays on its thread from the call until the message is read.
func call(f func() C.dpoimg_status) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if s := f(); s != C.DPOIMG_OK {
		return &Error{Status: Status(s), Message: C.GoString(C.dpoimg_last_error())}
	}
	return nil
}

// cstring returns a C copy of s (freed by the returned function); "" gives NULL when nullEmpty.
func cstring(s string, nullEmpty bool) (*C.char, func()) {
	if s == "" && nullEmpty {
		return nil, func() {}
	}
	p := C.CString(s)
	return p, func() { C.free(unsafe.Pointer(p)) }
}
