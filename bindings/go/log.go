package dpoimg

/*
#include <stdint.h>
#include <dpoimg.h>

// dpoimgGoLog is exported from callbacks.go; cgo cannot export const parameters, hence this
// trampoline with the header's exact signature.
extern void dpoimgGoLog(void *userdata, int32_t level, char *message);
static void dpoimg_go_log_trampoline(void *userdata, int32_t level, const char *message) {
	dpoimgGoLog(userdata, level, (char *)message);
}
// A cgo.Handle is an integer; it travels through C as the userdata pointer.
static dpoimg_status dpoimg_go_set_log(uintptr_t handle, int32_t level) {
	return dpoimg_log_set_callback(dpoimg_go_log_trampoline, (void *)handle, level);
}
*/
import "C"

import (
	"runtime/cgo"
	"sync"
)

// LogLevel is a message's severity.
type LogLevel int32

// Log levels, as in dpoimg.h.
const (
	LogOff   LogLevel = C.DPOIMG_LOG_OFF
	LogError LogLevel = C.DPOIMG_LOG_ERROR
	LogWarn  LogLevel = C.DPOIMG_LOG_WARN
	LogInfo  LogLevel = C.DPOIMG_LOG_INFO
	LogDebug LogLevel = C.DPOIMG_LOG_DEBUG
	LogTrace LogLevel = C.DPOIMG_LOG_TRACE
)

var (
	logMu     sync.Mutex // serialises SetLogger; guards logHandle
	logHandle cgo.Handle
)

// SetLogger sends the library's messages at maxLevel and more severe to fn, which may be called
// from any goroutine or thread, concurrently. A nil fn stops logging. The logger is process-wide.
func SetLogger(maxLevel LogLevel, fn func(LogLevel, string)) error {
	logMu.Lock()
	defer logMu.Unlock()
	var h cgo.Handle
	var err error
	if fn == nil {
		err = call(func() C.dpoimg_status { return C.dpoimg_log_set_callback(nil, nil, C.DPOIMG_LOG_OFF) })
	} else {
		h = cgo.NewHandle(fn)
		err = setLogCallback(h, maxLevel)
	}
	if err != nil {
		if h != 0 {
			h.Delete()
		}
		return err
	}
	// The library guarantees the previous callback has returned and is never called again.
	if logHandle != 0 {
		logHandle.Delete()
	}
	logHandle = h
	return nil
}

func setLogCallback(h cgo.Handle, level LogLevel) error {
	return call(func() C.dpoimg_status { return C.dpoimg_go_set_log(C.uintptr_t(h), C.int32_t(level)) })
}
