package dpoimg

/*
#include <dpoimg.h>
*/
import "C"

import "sync"

// Adapter is a LoRA adapter loaded on an engine. It stays valid after UnloadAdapter and after
// the engine's Close, until its own Close.
type Adapter struct {
	mu  sync.RWMutex
	ptr *C.dpoimg_adapter
	AdapterInfo
}

// AdapterInfo describes a loaded adapter.
type AdapterInfo struct {
	Name   string // the name it is loaded under
	Path   string // the file it was read from
	SHA256 string // of the file
	Rank   int
}

func infoOf(a *C.dpoimg_adapter) (AdapterInfo, error) {
	var info *C.dpoimg_adapter_info
	if err := call(func() C.dpoimg_status { return C.dpoimg_adapter_get_info(a, &info) }); err != nil {
		return AdapterInfo{}, err
	}
	return AdapterInfo{
		Name:   C.GoString(info.name),
		Path:   C.GoString(info.path),
		SHA256: C.GoString(info.sha256),
		Rank:   int(info.rank),
	}, nil
}

// LoadAdapter reads the adapter file at path, checks it against the engine's bundle and loads it
// under name ("" = the file name without extension).
func (e *Engine) LoadAdapter(path, name string) (*Adapter, error) {
	p, freeP := cstring(path, false)
	defer freeP()
	n, freeN := cstring(name, true)
	defer freeN()
	a := &Adapter{}
	err := e.use(func(ep *C.dpoimg_engine) error {
		return call(func() C.dpoimg_status { return C.dpoimg_engine_adapter_load(ep, p, n, &a.ptr) })
	})
	if err != nil {
		return nil, err
	}
	if a.AdapterInfo, err = infoOf(a.ptr); err != nil {
		C.dpoimg_adapter_free(a.ptr)
		return nil, err
	}
	return a, nil
}

// Close releases the adapter handle (it does not unload the name from the engine).
func (a *Adapter) Close() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	C.dpoimg_adapter_free(a.ptr)
	a.ptr = nil
	return nil
}

// UnloadAdapter removes the adapter loaded under name; generations in flight keep it.
func (e *Engine) UnloadAdapter(name string) error {
	n, freeN := cstring(name, false)
	defer freeN()
	return e.use(func(ep *C.dpoimg_engine) error {
		return call(func() C.dpoimg_status { return C.dpoimg_engine_adapter_unload(ep, n) })
	})
}

// Adapters lists the adapters loaded on the engine, sorted by name.
func (e *Engine) Adapters() ([]AdapterInfo, error) {
	var out []AdapterInfo
	err := e.use(func(ep *C.dpoimg_engine) error {
		var list *C.dpoimg_adapter_list
		if err := call(func() C.dpoimg_status { return C.dpoimg_engine_adapter_list(ep, &list) }); err != nil {
			return err
		}
		defer C.dpoimg_adapter_list_free(list)
		n := int(C.dpoimg_adapter_list_count(list))
		for i := 0; i < n; i++ {
			var a *C.dpoimg_adapter
			if err := call(func() C.dpoimg_status {
				return C.dpoimg_adapter_list_get(list, C.size_t(i), &a)
			}); err != nil {
				return err
			}
			info, err := infoOf(a)
			if err != nil {
				return err
			}
			out = append(out, info)
		}
		return nil
	})
	return out, err
}
