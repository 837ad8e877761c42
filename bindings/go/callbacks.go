package dpoimg

// The functions C calls back. This file's cgo preamble may only declare (cgo's rule for files
// with //export), so the trampolines live in dpoimg.go.

/*
#include <stdint.h>
#include <dpoimg.h>
*/
import "C"

import (
	"fmt"
	"runtime/cgo"
	"unsafe"
)

// progressState is what a generation's progress userdata refers to (through a cgo.Handle).
type progressState struct {
	fn       func(Progress) bool
	panicked any
}

//export dpoimgGoProgress
func dpoimgGoProgress(userdata unsafe.Pointer, p *C.dpoimg_progress) (keepGoing C.bool) {
	st := cgo.Handle(uintptr(userdata)).Value().(*progressState)
	// A panic must not unwind through C: stop the run and re-raise it in Generate.
	defer func() {
		if r := recover(); r != nil {
			st.panicked = r
			keepGoing = false
		}
	}()
	return C.bool(st.fn(Progress{
		Stage:      Stage(p.stage),
		Step:       int(p.step),
		TotalSteps: int(p.total_steps),
	}))
}

//export dpoimgGoLog
func dpoimgGoLog(userdata unsafe.Pointer, level C.int32_t, message *C.char) {
	fn := cgo.Handle(uintptr(userdata)).Value().(func(LogLevel, string))
	defer func() {
		if r := recover(); r != nil {
			// Never unwind into the library; a logger that panics loses that message only.
			_ = fmt.Sprint(r)
		}
	}()
	fn(LogLevel(level), C.GoString(message))
}
