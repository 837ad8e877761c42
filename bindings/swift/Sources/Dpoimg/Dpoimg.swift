// Swift wrapper of libdpoimg: classes that own library handles and free them in deinit, errors as
// Swift errors, and generation as async/await with task cancellation.

import CDpoimg
import Foundation

/// A failed libdpoimg call: its status code and the library's message.
public struct DpoimgError: Error, CustomStringConvertible, Sendable {
    public let status: Int32
    public let message: String

    public var description: String {
        "\(String(cString: dpoimg_status_name(status))): \(message)"
    }
    public var isCancelled: Bool { status == DPOIMG_ERR_CANCELLED }
}

/// Turns a status into a thrown error. Called right after the C call, on the same thread, so the
/// per-thread last-error message is the call's own.
@inline(__always)
func check(_ status: dpoimg_status) throws {
    if status != DPOIMG_OK {
        throw DpoimgError(status: status, message: String(cString: dpoimg_last_error()))
    }
}

/// The library's version ("MAJOR.MINOR.PATCH").
public var dpoimgVersion: String { String(cString: dpoimg_version()) }

/// C copies of Swift strings that live as long as this object (for options structs).
final class CStrings {
    private var owned: [UnsafeMutablePointer<CChar>] = []
    func add(_ s: String?) -> UnsafePointer<CChar>? {
        guard let s else { return nil }
        let p = strdup(s)!
        owned.append(p)
        return UnsafePointer(p)
    }
    deinit { owned.forEach { free($0) } }
}

/// An opened model bundle. Immutable and thread-safe: share one engine between tasks.
public final class Engine: @unchecked Sendable {
    let handle: OpaquePointer

    /// Loads and checks the bundle in `bundle` (a directory). `device`: "auto", "cpu", "cuda",
    /// "cuda:N". `threads`: ONNX Runtime intra-op threads, 0 = default.
    public init(bundle: String, device: String = "auto", threads: UInt32 = 0,
                verify: Bool = true) throws {
        var o = dpoimg_engine_options()
        try check(dpoimg_engine_options_init(&o, UInt32(DPOIMG_ENGINE_OPTIONS_VERSION)))
        let strings = CStrings()
        o.device = strings.add(device)
        o.intra_threads = threads
        o.verify = verify
        var h: OpaquePointer?
        // ARC may end `strings` after its last use; keep the C copies alive across the call.
        try withExtendedLifetime(strings) { try check(dpoimg_engine_open(bundle, &o, &h)) }
        handle = h!
    }

    deinit { dpoimg_engine_close(handle) }

    /// Loads an adapter file under `name` (nil = the file name without extension).
    public func loadAdapter(path: String, name: String? = nil) throws -> Adapter {
        var a: OpaquePointer?
        let strings = CStrings()
        try withExtendedLifetime(strings) {
            try check(dpoimg_engine_adapter_load(handle, path, strings.add(name), &a))
        }
        return try Adapter(handle: a!)
    }

    /// Unloads the adapter loaded under `name`; handles to it stay valid.
    public func unloadAdapter(name: String) throws {
        try check(dpoimg_engine_adapter_unload(handle, name))
    }

    /// The names of the loaded adapters, sorted.
    public func adapterNames() throws -> [String] {
        var list: OpaquePointer?
        try check(dpoimg_engine_adapter_list(handle, &list))
        defer { dpoimg_adapter_list_free(list) }
        return try (0..<dpoimg_adapter_list_count(list)).map { i in
            var a: OpaquePointer?
            try check(dpoimg_adapter_list_get(list, i, &a))
            var info: UnsafePointer<dpoimg_adapter_info>?
            try check(dpoimg_adapter_get_info(a, &info))
            return String(cString: info!.pointee.name)
        }
    }

    /// Generates images. Cancelling the calling task stops the run (between steps, or inside the
    /// model run in progress) and throws `CancellationError`. `progress` is called on the
    /// generating thread; return false to stop.
    public func generate(_ options: GenerateOptions,
                         progress: (@Sendable (GenerationProgress) -> Bool)? = nil) async throws -> GeneratedImages {
        let cancel = try CancelHandle()
        do {
            return try await withTaskCancellationHandler {
                try await withCheckedThrowingContinuation { (cont: CheckedContinuation<GeneratedImages, Error>) in
                    // The call blocks; run it on its own thread, not on the cooperative pool.
                    Thread.detachNewThread {
                        cont.resume(with: Result {
                            try self.generateBlocking(options, cancel: cancel, progress: progress)
                        })
                    }
                }
            } onCancel: {
                cancel.request()
            }
        } catch let e as DpoimgError where e.isCancelled && Task.isCancelled {
            throw CancellationError()
        }
    }

    /// The synchronous call behind `generate`.
    func generateBlocking(_ options: GenerateOptions, cancel: CancelHandle?,
                          progress: ((GenerationProgress) -> Bool)?) throws -> GeneratedImages {
        var o = dpoimg_generate_options()
        try check(dpoimg_generate_options_init(&o, UInt32(DPOIMG_GENERATE_OPTIONS_VERSION)))
        let strings = CStrings()
        o.prompt = strings.add(options.prompt)
        o.negative_prompt = strings.add(options.negativePrompt)
        o.sampler = strings.add(options.sampler)
        o.seed = options.seed
        o.steps = options.steps
        if let g = options.guidance { o.guidance = g }
        o.eta = options.eta
        o.width = options.width
        o.height = options.height
        o.count = options.count
        o.cancel = cancel?.handle
        let refs: [dpoimg_adapter_ref] = options.adapters.map { r in
            switch r.target {
            case .handle(let a): return dpoimg_adapter_ref(adapter: a.handle, name: nil, strength: r.strength)
            case .name(let n): return dpoimg_adapter_ref(adapter: nil, name: strings.add(n), strength: r.strength)
            }
        }
        let box = progress.map { Unmanaged.passRetained(ProgressBox($0)) }
        defer { box?.release() }
        if let box {
            o.progress_userdata = box.toOpaque()
            o.progress = { userdata, p in
                let b = Unmanaged<ProgressBox>.fromOpaque(userdata!).takeUnretainedValue()
                return b.fn(GenerationProgress(p!.pointee))
            }
        }
        var out: OpaquePointer?
        // The C strings, the adapters and the cancel handle must outlive the call.
        try withExtendedLifetime((strings, options.adapters, cancel)) {
            try refs.withUnsafeBufferPointer { buf in
                o.adapters = buf.baseAddress
                o.adapter_count = buf.count
                try check(dpoimg_generate(handle, &o, &out))
            }
        }
        return GeneratedImages(handle: out!)
    }
}

final class ProgressBox {
    let fn: (GenerationProgress) -> Bool
    init(_ fn: @escaping (GenerationProgress) -> Bool) { self.fn = fn }
}

/// A cancel handle shared by the generating thread and the task's cancellation handler; freed
/// when both are done with it.
final class CancelHandle: @unchecked Sendable {
    let handle: OpaquePointer
    init() throws {
        var h: OpaquePointer?
        try check(dpoimg_cancel_new(&h))
        handle = h!
    }
    func request() { _ = dpoimg_cancel_request(handle) }
    deinit { dpoimg_cancel_free(handle) }
}

/// What a generation is doing.
public struct GenerationProgress: Sendable {
    public enum Stage: Sendable { case encodingPrompt, denoising, decoding, other(Int32) }
    public let stage: Stage
    public let step: Int
    public let totalSteps: Int

    init(_ p: dpoimg_progress) {
        switch p.stage {
        case DPOIMG_STAGE_ENCODING_PROMPT: stage = .encodingPrompt
        case DPOIMG_STAGE_DENOISING: stage = .denoising
        case DPOIMG_STAGE_DECODING: stage = .decoding
        default: stage = .other(p.stage)
        }
        step = Int(p.step)
        totalSteps = Int(p.total_steps)
    }
}

/// A loaded adapter; valid until released, even after an unload or the engine's deinit.
public final class Adapter: @unchecked Sendable {
    let handle: OpaquePointer
    public let name: String
    public let sha256: String
    public let rank: Int

    init(handle: OpaquePointer) throws {
        self.handle = handle
        var info: UnsafePointer<dpoimg_adapter_info>?
        let status = dpoimg_adapter_get_info(handle, &info)
        if status != DPOIMG_OK {
            dpoimg_adapter_free(handle)
            throw DpoimgError(status: status, message: String(cString: dpoimg_last_error()))
        }
        name = String(cString: info!.pointee.name)
        sha256 = String(cString: info!.pointee.sha256)
        rank = Int(info!.pointee.rank)
    }

    deinit { dpoimg_adapter_free(handle) }
}

/// An adapter applied to a generation, by handle or by loaded name.
public struct AdapterRef: Sendable {
    enum Target: Sendable { case handle(Adapter), name(String) }
    let target: Target
    public let strength: Float
    public static func adapter(_ a: Adapter, strength: Float = 1) -> AdapterRef {
        AdapterRef(target: .handle(a), strength: strength)
    }
    public static func named(_ n: String, strength: Float = 1) -> AdapterRef {
        AdapterRef(target: .name(n), strength: strength)
    }
}

/// One text-to-image request; zero values mean the bundle's defaults.
public struct GenerateOptions: Sendable {
    public var prompt: String
    public var negativePrompt: String? = nil
    public var seed: UInt64 = 0
    public var steps: UInt32 = 0
    public var guidance: Float? = nil
    public var sampler: String? = nil
    public var eta: Double = 0
    public var width: UInt32 = 0
    public var height: UInt32 = 0
    public var count: UInt32 = 1
    public var adapters: [AdapterRef] = []

    public init(prompt: String) { self.prompt = prompt }
}

/// One image: 8-bit RGB rows, `stride` bytes apart.
public struct GeneratedImage: Sendable {
    public let width: Int
    public let height: Int
    public let stride: Int
    public let pixels: [UInt8]
}

/// The images of one generation; frees the library's copy in deinit.
public final class GeneratedImages: @unchecked Sendable {
    let handle: OpaquePointer
    init(handle: OpaquePointer) { self.handle = handle }
    deinit { dpoimg_images_free(handle) }

    public var count: Int { dpoimg_images_count(handle) }

    /// Image `index`, copied into Swift memory.
    public func image(at index: Int) throws -> GeneratedImage {
        var img: UnsafePointer<dpoimg_image>?
        try check(dpoimg_images_get(handle, index, &img))
        let i = img!.pointee
        return GeneratedImage(width: Int(i.width), height: Int(i.height), stride: i.stride,
                     pixels: Array(UnsafeBufferPointer(start: i.data, count: i.len)))
    }

    /// Image `index` as a PNG file with its provenance.
    public func png(at index: Int) throws -> Data {
        var b: UnsafeMutablePointer<dpoimg_bytes>?
        try check(dpoimg_images_encode_png(handle, index, &b))
        defer { dpoimg_bytes_free(b) }
        return Data(bytes: b!.pointee.data, count: b!.pointee.len)
    }
}
