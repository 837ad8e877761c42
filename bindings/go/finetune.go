package dpoimg

/*
#include <stdlib.h>
#include <dpoimg.h>
*/
import "C"

import (
	"context"
	"time"
	"unsafe"
)

// FinetuneStage says what a fine-tuning run is doing.
type FinetuneStage int

// Fine-tuning stages, as in dpoimg.h.
const (
	FinetuneEncoding   FinetuneStage = C.DPOIMG_FINETUNE_STAGE_ENCODING
	FinetuneStep       FinetuneStage = C.DPOIMG_FINETUNE_STAGE_STEP
	FinetuneCheckpoint FinetuneStage = C.DPOIMG_FINETUNE_STAGE_CHECKPOINT
	FinetuneFinished   FinetuneStage = C.DPOIMG_FINETUNE_STAGE_FINISHED
)

// FinetuneProgress is a run's latest report.
type FinetuneProgress struct {
	Stage                           FinetuneStage
	Done, Total                     uint64
	Loss, ImplicitAcc, RewardMargin float64
}

// Finetune runs a Diffusion-DPO (or SFT) LoRA job described by configJSON (the settings of
// `dpoimg-finetune dpo`, docs/formats.md) on a library thread and returns the trained adapter's
// path. progress (may be nil) sees each new report, polled every pollEvery (0 = 100 ms), on the
// calling goroutine. Cancelling ctx stops the run after checkpointing its completed steps
// (resume with "resume": true) and returns ctx.Err().
func Finetune(ctx context.Context, configJSON string, pollEvery time.Duration, progress func(FinetuneProgress)) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", err
	}
	if pollEvery <= 0 {
		pollEvery = 100 * time.Millisecond
	}
	var o C.dpoimg_finetune_options
	if err := call(func() C.dpoimg_status {
		return C.dpoimg_finetune_options_init(&o, C.DPOIMG_FINETUNE_OPTIONS_VERSION)
	}); err != nil {
		return "", err
	}
	cfg, freeCfg := cstring(configJSON, false)
	defer freeCfg()
	o.config_json = cfg
	var job *C.dpoimg_finetune_job
	if err := call(func() C.dpoimg_status { return C.dpoimg_finetune_start(&o, &job) }); err != nil {
		return "", err
	}
	defer C.dpoimg_finetune_job_free(job)
	tick := time.NewTicker(pollEvery)
	defer tick.Stop()
	var last C.dpoimg_finetune_progress
	cancelled := false
	for {
		var p C.dpoimg_finetune_progress
		var finished C.bool
		if err := call(func() C.dpoimg_status { return C.dpoimg_finetune_job_poll(job, &p, &finished) }); err != nil {
			return "", err
		}
		if progress != nil && p != last {
			last = p
			progress(FinetuneProgress{
				Stage: FinetuneStage(p.stage), Done: uint64(p.done), Total: uint64(p.total),
				Loss: float64(p.loss), ImplicitAcc: float64(p.implicit_acc), RewardMargin: float64(p.reward_margin),
			})
		}
		if bool(finished) {
			break
		}
		select {
		case <-ctx.Done():
			if !cancelled {
				cancelled = true
				C.dpoimg_finetune_job_cancel(job)
			}
		case <-tick.C:
		}
	}
	if err := call(func() C.dpoimg_status { return C.dpoimg_finetune_job_wait(job) }); err != nil {
		if cancelled {
			return "", ctx.Err()
		}
		return "", err
	}
	buf := (*C.char)(C.malloc(4096))
	defer C.free(unsafe.Pointer(buf))
	var n C.size_t
	if err := call(func() C.dpoimg_status { return C.dpoimg_finetune_job_adapter_path(job, buf, 4096, &n) }); err != nil {
		return "", err
	}
	return C.GoStringN(buf, C.int(n)), nil
}
