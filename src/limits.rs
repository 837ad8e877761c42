//! Limits on request sizes. They protect a shared engine (C ABI, daemon) from requests that would
//! exhaust memory or time; each violation is a clear error naming the field and the range.

/// Largest image side in pixels.
pub const MAX_SIDE: u32 = 2048;
/// Most denoising steps per request.
pub const MAX_STEPS: u32 = 1000;
/// Most images per request.
pub const MAX_COUNT: u32 = 16;
/// Largest guidance scale accepted.
pub const MAX_GUIDANCE: f32 = 100.0;
/// Longest prompt or negative prompt in bytes (the text encoder sees 77 tokens anyway).
pub const MAX_PROMPT_BYTES: usize = 16 * 1024;
/// Most adapters composed in one request.
pub const MAX_ADAPTERS: usize = 16;
/// Largest |strength| of an adapter.
pub const MAX_STRENGTH: f32 = 16.0;
