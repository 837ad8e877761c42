// Scoring with a reward bundle and Diffusion-DPO fine-tuning jobs, on the same conventions as
// Dpoimg.swift: handles freed in deinit, errors thrown as DpoimgError, long work as async with
// task cancellation. Written against include/dpoimg.h; this project's CI has no Swift toolchain,
// so it is checked only through the module map there.

import CDpoimg
import Foundation

/// An opened reward bundle (ImageReward format). Thread-safe: share one between tasks.
public final class Reward: @unchecked Sendable {
    let handle: OpaquePointer

    public init(directory: String, device: String = "auto", threads: UInt32 = 0,
                verify: Bool = true) throws {
        var o = dpoimg_engine_options()
        try check(dpoimg_engine_options_init(&o, UInt32(DPOIMG_ENGINE_OPTIONS_VERSION)))
        let strings = CStrings()
        o.device = strings.add(device)
        o.intra_threads = threads
        o.verify = verify
        var h: OpaquePointer?
        try withExtendedLifetime(strings) { try check(dpoimg_reward_open(directory, &o, &h)) }
        handle = h!
    }

    deinit { dpoimg_reward_close(handle) }

    /// One normalised reward per image for `prompt`.
    public func score(prompt: String, images: [GeneratedImage]) throws -> [Float] {
        guard !images.isEmpty else {
            throw DpoimgError(status: DPOIMG_ERR_INVALID_ARGUMENT, message: "no images")
        }
        // Copies in C memory that outlive the call.
        let buffers = images.map { im -> UnsafeMutableBufferPointer<UInt8> in
            let b = UnsafeMutableBufferPointer<UInt8>.allocate(capacity: max(im.pixels.count, 1))
            _ = b.initialize(from: im.pixels)
            return b
        }
        defer { buffers.forEach { $0.deallocate() } }
        var views = zip(images, buffers).map { im, b in
            dpoimg_image(width: UInt32(im.width), height: UInt32(im.height), stride: im.stride,
                         data: UnsafePointer(b.baseAddress), len: im.pixels.count)
        }
        var scores = [Float](repeating: 0, count: images.count)
        try check(dpoimg_reward_score(handle, prompt, &views, views.count, &scores))
        return scores
    }
}

/// A fine-tuning run's latest report.
public struct FinetuneProgress: Sendable, Equatable {
    public let stage: Int32
    public let done: UInt64
    public let total: UInt64
    public let loss: Double
    public let implicitAccuracy: Double
}

/// Runs a Diffusion-DPO job described by `configJSON` (docs/formats.md) on a library thread and
/// returns the trained adapter's path. Cancelling the task stops the run after a checkpoint
/// (resume with `"resume": true`) and throws CancellationError.
public func finetune(configJSON: String, pollEvery: Duration = .milliseconds(100),
                     progress: (@Sendable (FinetuneProgress) -> Void)? = nil) async throws -> String {
    var o = dpoimg_finetune_options()
    try check(dpoimg_finetune_options_init(&o, UInt32(DPOIMG_FINETUNE_OPTIONS_VERSION)))
    let strings = CStrings()
    o.config_json = strings.add(configJSON)
    var job: OpaquePointer?
    try withExtendedLifetime(strings) { try check(dpoimg_finetune_start(&o, &job)) }
    defer { dpoimg_finetune_job_free(job) }
    var last: FinetuneProgress?
    var cancelled = false
    while true {
        var p = dpoimg_finetune_progress()
        var finished = false
        try check(dpoimg_finetune_job_poll(job, &p, &finished))
        let now = FinetuneProgress(stage: p.stage, done: p.done, total: p.total, loss: p.loss,
                                   implicitAccuracy: p.implicit_acc)
        if now != last { last = now; progress?(now) }
        if finished { break }
        if Task.isCancelled && !cancelled {
            cancelled = true
            _ = dpoimg_finetune_job_cancel(job)
        }
        try? await Task.sleep(for: pollEvery)
    }
    do {
        try check(dpoimg_finetune_job_wait(job))
    } catch let e as DpoimgError where e.isCancelled && cancelled {
        throw CancellationError()
    }
    var buf = [CChar](repeating: 0, count: 4096)
    var n = 0
    try check(dpoimg_finetune_job_adapter_path(job, &buf, buf.count, &n))
    return String(cString: buf)
}
