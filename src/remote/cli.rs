//! The `dpoimg --socket PATH ...` commands: `generate` and `score` with the local commands'
//! arguments and output, plus `job ...` and `adapters ...` for the daemon's jobs and adapters.
//!
//! `generate` writes the daemon's PNG bytes unchanged where local mode would write its own (the
//! daemon encodes the same image with the same provenance chunks, so the files are identical);
//! `score` prints through the same writer as local `dpoimg score`.

use super::{Client, RemoteError};
use crate::scheduler::SamplerKind;
use crate::score::cli::{collect_jobs, write_results, ScoreArgs, ScoredImage};
use crate::CancelToken;
use base64::Engine as _;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The arguments of `dpoimg generate` that travel to the daemon.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub prompt: String,
    pub negative_prompt: String,
    pub seed: u64,
    pub steps: Option<u32>,
    pub guidance: Option<f32>,
    pub sampler: Option<SamplerKind>,
    pub eta: f64,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub count: u32,
    /// `NAME[:STRENGTH]`: adapters in the daemon's adapter directory, by name. None given: the
    /// daemon's default adapter (if one is set) applies.
    pub adapters: Vec<String>,
    pub output: PathBuf,
    /// If given, must be the bundle the daemon serves (compared by `bundle.json` sha256).
    pub bundle: Option<PathBuf>,
    pub quiet: bool,
}

fn usage(m: impl Into<String>) -> RemoteError {
    RemoteError::Usage(m.into())
}

/// `NAME[:STRENGTH]` → `{"name", "strength"}`; a path is refused with the fix.
fn adapter_spec(arg: &str) -> Result<serde_json::Value, RemoteError> {
    let (name, strength) = match arg.rsplit_once(':') {
        Some((n, s)) => match s.parse::<f32>() {
            Ok(v) if v.is_finite() => (n, v),
            Ok(_) => return Err(usage(format!("--adapter {arg:?}: strength is not finite"))),
            Err(_) => (arg, 1.0),
        },
        None => (arg, 1.0),
    };
    if name.contains('/') || name.ends_with(".safetensors") {
        return Err(usage(format!(
            "--adapter {arg:?}: with --socket, adapters are named, not paths. Fix: copy the file into the daemon's adapter directory as NAME.safetensors (`dpoimg --socket PATH adapters list` shows it) and pass --adapter NAME[:STRENGTH]"
        )));
    }
    Ok(serde_json::json!({"name": name, "strength": strength}))
}

/// A file name in `dir` that does not exist yet: local mode's naming, so both modes write the
/// same names (`dpoimg-SEED-I.png`, then `-1`, `-2`... suffixes, never overwriting).
fn fresh_path(dir: &Path, stem: &str, ext: &str) -> PathBuf {
    let first = dir.join(format!("{stem}.{ext}"));
    if !first.exists() {
        return first;
    }
    (1..)
        .map(|k| dir.join(format!("{stem}-{k}.{ext}")))
        .find(|p| !p.exists())
        .expect("an unused name exists")
}

/// Checks that `--bundle DIR`, when given, is the bundle the daemon serves.
fn check_bundle(dir: &Path, version: &serde_json::Value) -> Result<(), RemoteError> {
    let manifest = dir.join("bundle.json");
    let bytes = std::fs::read(&manifest).map_err(|e| RemoteError::Io {
        path: manifest.clone(),
        message: format!("cannot read --bundle's manifest: {e}"),
    })?;
    let mine = crate::hash::sha256_hex(&bytes);
    let theirs = version["bundle_sha256"].as_str().unwrap_or_default();
    if mine != theirs {
        return Err(usage(format!(
            "--bundle {} (bundle.json sha256 {mine}) is not the bundle this daemon serves ({}, sha256 {theirs}). Fix: drop --bundle, or start dpoimgd with --bundle {}",
            dir.display(),
            version["bundle"].as_str().unwrap_or("?"),
            dir.display()
        )));
    }
    Ok(())
}

/// `dpoimg --socket PATH generate ...`: sends the request, shows the progress stream, writes the
/// PNGs and prints their paths to `out`. `cancel` (Ctrl-C) closes the connection, which cancels
/// the request in the daemon.
pub fn generate(
    client: &Client,
    o: &GenerateOptions,
    cancel: &CancelToken,
    out: &mut dyn Write,
) -> Result<Vec<PathBuf>, RemoteError> {
    // Fail on an unusable output directory before the daemon spends time on it.
    std::fs::create_dir_all(&o.output).map_err(|e| RemoteError::Io {
        path: o.output.clone(),
        message: format!("output directory: {e}"),
    })?;
    let probe = o
        .output
        .join(format!(".dpoimg-write-test-{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(|e| RemoteError::Io {
        path: o.output.clone(),
        message: format!("output directory is not writable: {e}"),
    })?;
    let _ = std::fs::remove_file(&probe);

    let version = client.version()?;
    if let Some(b) = &o.bundle {
        check_bundle(b, &version)?;
    }
    let mut body = serde_json::json!({
        "prompt": o.prompt,
        "negative_prompt": o.negative_prompt,
        "seed": o.seed,
        "eta": o.eta,
        "count": o.count,
        "response": "base64",
    });
    let m = body.as_object_mut().expect("an object");
    if let Some(v) = o.steps {
        m.insert("steps".into(), v.into());
    }
    if let Some(v) = o.guidance {
        m.insert("guidance".into(), v.into());
    }
    if let Some(v) = o.sampler {
        m.insert("sampler".into(), v.to_string().into());
    }
    if let Some(v) = o.width {
        m.insert("width".into(), v.into());
    }
    if let Some(v) = o.height {
        m.insert("height".into(), v.into());
    }
    if !o.adapters.is_empty() {
        let specs = o
            .adapters
            .iter()
            .map(|a| adapter_spec(a))
            .collect::<Result<Vec<_>, _>>()?;
        m.insert("adapters".into(), specs.into());
    }

    let bar = if o.quiet {
        ProgressBar::hidden()
    } else {
        let b = ProgressBar::new(u64::from(o.steps.unwrap_or(0)));
        b.set_style(
            ProgressStyle::with_template(
                "{msg:>10} [{bar:30}] {pos}/{len} steps  {elapsed} (eta {eta})",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        b
    };
    let mut done: Option<serde_json::Value> = None;
    let r = client.stream("POST", "/v1/generate", Some(&body), cancel, &mut |ev| {
        match ev["event"].as_str() {
            Some("progress") => {
                if let Some(n) = ev["total_steps"].as_u64() {
                    bar.set_length(n);
                }
                if let Some(n) = ev["step"].as_u64() {
                    bar.set_position(n);
                }
                bar.set_message(ev["stage"].as_str().unwrap_or_default().to_string());
            }
            Some("done") => done = Some(ev.clone()),
            _ => {}
        }
        Ok(())
    });
    bar.finish_and_clear();
    r?;
    let done = done.ok_or_else(|| RemoteError::Protocol {
        path: client.socket().to_path_buf(),
        message: "the stream ended without a `done` event (did the daemon stop?)".into(),
    })?;
    let images = done["images"].as_array().cloned().unwrap_or_default();
    let mut paths = Vec::with_capacity(images.len());
    let stem = format!("dpoimg-{}", o.seed);
    for (i, img) in images.iter().enumerate() {
        let b64 = img["png_base64"]
            .as_str()
            .ok_or_else(|| RemoteError::Protocol {
                path: client.socket().to_path_buf(),
                message: format!("image {i} of the `done` event has no png_base64"),
            })?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| RemoteError::Protocol {
                path: client.socket().to_path_buf(),
                message: format!("image {i}: bad base64: {e}"),
            })?;
        let path = fresh_path(&o.output, &format!("{stem}-{i}"), "png");
        crate::fsutil::atomic_write(&path, &png).map_err(|e| RemoteError::Io {
            path: path.clone(),
            message: format!("writing: {e}"),
        })?;
        writeln!(out, "{}", path.display()).map_err(|e| usage(format!("stdout: {e}")))?;
        paths.push(path);
    }
    eprintln!(
        "{} image(s) {}x{} in {:.2}s by dpoimgd on {} ({}, {}; batched with {} other request(s))",
        paths.len(),
        done["width"],
        done["height"],
        done["seconds"].as_f64().unwrap_or(0.0),
        client.socket().display(),
        version["bundle"].as_str().unwrap_or("?"),
        version["device"].as_str().unwrap_or("?"),
        done["batched_with"]
    );
    Ok(paths)
}

/// `dpoimg --socket PATH score ...`: the same arguments and output as local `dpoimg score`; the
/// images (their file bytes) and prompts go to `POST /v1/score`, the daemon's `--reward` bundle
/// scores them.
pub fn score(client: &Client, args: &ScoreArgs, out: &mut dyn Write) -> Result<(), RemoteError> {
    let jobs = collect_jobs(args).map_err(|e| usage(e.to_string()))?;
    let mut items = Vec::with_capacity(jobs.len());
    for (path, prompt) in &jobs {
        // Decode here too, so a missing or broken file fails as it does locally, naming it.
        crate::score::load_image(path).map_err(|e| usage(e.to_string()))?;
        let bytes = std::fs::read(path).map_err(|e| RemoteError::Io {
            path: path.clone(),
            message: e.to_string(),
        })?;
        items.push(serde_json::json!({
            "name": path.display().to_string(),
            "prompt": prompt,
            "data_base64": base64::engine::general_purpose::STANDARD.encode(&bytes),
        }));
    }
    client.version()?;
    let v = client.json(
        "POST",
        "/v1/score",
        Some(&serde_json::json!({"images": items})),
    )?;
    let protocol = |m: String| RemoteError::Protocol {
        path: client.socket().to_path_buf(),
        message: m,
    };
    if !args.reward.as_os_str().is_empty() {
        let manifest = args.reward.join("reward.json");
        let mine = crate::hash::sha256_file(&manifest).map_err(|e| RemoteError::Io {
            path: manifest.clone(),
            message: format!("cannot read --reward's manifest: {e}"),
        })?;
        let theirs = v["reward_sha256"].as_str().unwrap_or_default();
        if mine != theirs {
            return Err(usage(format!(
                "--reward {} (reward.json sha256 {mine}) is not the reward bundle this daemon serves ({}, sha256 {theirs}). Fix: drop --reward, or start dpoimgd with --reward {}",
                args.reward.display(),
                v["reward_dir"].as_str().unwrap_or("?"),
                args.reward.display()
            )));
        }
    }
    let scores = v["results"]
        .as_array()
        .filter(|r| r.len() == jobs.len())
        .ok_or_else(|| protocol(format!("expected {} results: {v}", jobs.len())))?;
    let results = jobs
        .iter()
        .zip(scores)
        .map(|((image, prompt), r)| {
            Ok(ScoredImage {
                image: image.clone(),
                prompt: prompt.clone(),
                score: r["score"]
                    .as_f64()
                    .ok_or_else(|| protocol(format!("a result without a score: {r}")))?
                    as f32,
            })
        })
        .collect::<Result<Vec<_>, RemoteError>>()?;
    write_results(
        out,
        v["reward"].as_str().unwrap_or_default(),
        Path::new(v["reward_dir"].as_str().unwrap_or_default()),
        &results,
        args.json,
    )
    .map_err(|e| usage(e.to_string()))
}

/// `dpoimg --socket PATH job ...`: fine-tune jobs in the daemon (`/v1/jobs`).
#[derive(Debug, Clone, clap::Subcommand)]
pub enum JobCommand {
    /// Submit a job. FILE is the body of `POST /v1/jobs` (docs/daemon.md):
    /// `{"kind": "dpo", "config": {...}, "activate_on_success": {...}}`. The daemon reads the
    /// paths inside it, so give absolute paths.
    Submit { file: PathBuf },
    /// A job's record (state, step, attempts, error, outcome) as JSON.
    Status { id: String },
    /// Cancel a job (a running job stops after checkpointing its completed steps).
    Cancel { id: String },
    /// Every job, one line each (or --json).
    List {
        #[arg(long)]
        json: bool,
    },
    /// A job's event log (NDJSON); --follow keeps printing until the job ends.
    Logs {
        id: String,
        #[arg(long, short)]
        follow: bool,
    },
}

/// `dpoimg --socket PATH adapters ...`: the adapters the daemon serves (`/v1/adapters`).
#[derive(Debug, Clone, clap::Subcommand)]
pub enum AdaptersCommand {
    /// Loaded and available adapters and the default one (or --json).
    List {
        #[arg(long)]
        json: bool,
    },
    /// (Re)load ADAPTER_DIR/NAME.safetensors: a replaced file is served from the next request.
    Load { name: String },
    /// Unload an adapter (also clears it as the default).
    Unload { name: String },
    /// Set the adapter used by requests that name none, or --clear it.
    Default {
        #[arg(required_unless_present = "clear")]
        name: Option<String>,
        #[arg(long, default_value_t = 1.0)]
        strength: f32,
        #[arg(long, conflicts_with = "name")]
        clear: bool,
    },
}

/// Job ids go into the URL path: only the daemon's own id characters are sent.
fn job_path(id: &str) -> Result<String, RemoteError> {
    if id.is_empty()
        || id.len() > 128
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    {
        return Err(usage(format!(
            "job id {id:?}: expected an id such as job-000001 (`dpoimg --socket PATH job list` shows them)"
        )));
    }
    Ok(format!("/v1/jobs/{id}"))
}

fn print_json(out: &mut dyn Write, v: &serde_json::Value) -> Result<(), RemoteError> {
    writeln!(out, "{}", serde_json::to_string_pretty(v).expect("JSON"))
        .map_err(|e| usage(format!("stdout: {e}")))
}

fn line(out: &mut dyn Write, s: &str) -> Result<(), RemoteError> {
    writeln!(out, "{s}").map_err(|e| usage(format!("stdout: {e}")))
}

/// Runs a `job` command, printing to `out`; `cancel` stops `logs --follow`.
pub fn job(
    client: &Client,
    cmd: &JobCommand,
    cancel: &CancelToken,
    out: &mut dyn Write,
) -> Result<(), RemoteError> {
    client.version()?;
    match cmd {
        JobCommand::Submit { file } => {
            let text = std::fs::read_to_string(file).map_err(|e| RemoteError::Io {
                path: file.clone(),
                message: format!("cannot read the job file: {e}"),
            })?;
            let body: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
                usage(format!(
                    "{}: not JSON ({e}); expected {{\"kind\": \"dpo\", \"config\": {{...}}}}",
                    file.display()
                ))
            })?;
            print_json(out, &client.json("POST", "/v1/jobs", Some(&body))?)
        }
        JobCommand::Status { id } => print_json(out, &client.json("GET", &job_path(id)?, None)?),
        JobCommand::Cancel { id } => print_json(out, &client.json("DELETE", &job_path(id)?, None)?),
        JobCommand::List { json } => {
            let v = client.json("GET", "/v1/jobs", None)?;
            if *json {
                return print_json(out, &v);
            }
            line(out, "id\tstate\tstep\tattempts\terror")?;
            for j in v["jobs"].as_array().into_iter().flatten() {
                line(
                    out,
                    &format!(
                        "{}\t{}\t{}\t{}\t{}",
                        j["id"].as_str().unwrap_or("?"),
                        j["state"].as_str().unwrap_or("?"),
                        j["step"],
                        j["attempts"],
                        j["error"].as_str().unwrap_or("")
                    ),
                )?;
            }
            Ok(())
        }
        JobCommand::Logs { id, follow } => {
            let path = format!(
                "{}/events{}",
                job_path(id)?,
                if *follow { "" } else { "?follow=false" }
            );
            client.stream("GET", &path, None, cancel, &mut |ev| {
                line(out, &serde_json::to_string(ev).expect("JSON"))?;
                out.flush().map_err(|e| usage(format!("stdout: {e}")))
            })
        }
    }
}

/// Runs an `adapters` command, printing to `out`.
pub fn adapters(
    client: &Client,
    cmd: &AdaptersCommand,
    out: &mut dyn Write,
) -> Result<(), RemoteError> {
    client.version()?;
    let post = |body: serde_json::Value| client.json("POST", "/v1/adapters", Some(&body));
    match cmd {
        AdaptersCommand::List { json } => {
            let v = client.json("GET", "/v1/adapters", None)?;
            if *json {
                return print_json(out, &v);
            }
            let loaded: Vec<&serde_json::Value> =
                v["loaded"].as_array().into_iter().flatten().collect();
            let default = v["default"]["name"].as_str();
            line(out, "name\tstate\tsha256")?;
            for name in v["available"].as_array().into_iter().flatten() {
                let name = name.as_str().unwrap_or("?");
                let l = loaded.iter().find(|l| l["name"] == name);
                let mut state = if l.is_some() { "loaded" } else { "available" }.to_string();
                if default == Some(name) {
                    state.push_str(&format!(",default({})", v["default"]["strength"]));
                }
                let sha = l.and_then(|l| l["sha256"].as_str()).unwrap_or("");
                line(out, &format!("{name}\t{state}\t{sha}"))?;
            }
            line(
                out,
                &format!("# adapter directory: {}", v["dir"].as_str().unwrap_or("?")),
            )
        }
        AdaptersCommand::Load { name } => print_json(
            out,
            &post(serde_json::json!({"action": "load", "name": name}))?,
        ),
        AdaptersCommand::Unload { name } => print_json(
            out,
            &post(serde_json::json!({"action": "unload", "name": name}))?,
        ),
        AdaptersCommand::Default {
            name,
            strength,
            clear,
        } => {
            let name = if *clear { None } else { name.clone() };
            print_json(
                out,
                &post(
                    serde_json::json!({"action": "set_default", "name": name, "strength": strength}),
                )?,
            )
        }
    }
}
