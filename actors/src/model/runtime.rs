//! The ONNX Runtime: loaded once per process from its shared library (`load-dynamic`), with
//! sessions built for this machine (intra-op threads, no spinning) on the best execution
//! provider compiled in, falling back to the CPU with a log line when it cannot register.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use ort::environment::Environment;
use ort::session::Session;

use super::ModelError;

/// The process's ONNX Runtime environment.
pub struct OnnxRuntime {
    env: Environment,
    library: PathBuf,
    intra_threads: usize,
}

static RUNTIME: OnceLock<Arc<OnnxRuntime>> = OnceLock::new();
static INIT: Mutex<()> = Mutex::new(());

impl OnnxRuntime {
    /// Loads the library and creates the environment; later calls return the first runtime
    /// (ONNX Runtime allows one environment per process).
    pub fn init(library: &Path, intra_threads: usize) -> Result<Arc<OnnxRuntime>, ModelError> {
        let _guard = INIT.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(runtime) = RUNTIME.get() {
            return Ok(runtime.clone());
        }
        if !library.is_file() {
            return Err(ModelError::RuntimeMissing(library.to_path_buf()));
        }
        let env = ort::init_from(library)
            .map_err(|err| ModelError::Runtime(format!("loading {}: {err}", library.display())))?
            .with_name("sting")
            .build()
            .map_err(|err| ModelError::Runtime(err.to_string()))?;
        let runtime = Arc::new(OnnxRuntime {
            env,
            library: library.to_path_buf(),
            intra_threads: intra_threads.max(1),
        });
        tracing::info!(library = %library.display(), "ONNX Runtime loaded");
        Ok(RUNTIME.get_or_init(|| runtime).clone())
    }

    pub fn library(&self) -> &Path {
        &self.library
    }

    /// A session for `model`, and the hardware it runs on ("cuda", "coreml" or "cpu").
    pub fn session(&self, model: &Path) -> Result<(Session, &'static str), ModelError> {
        if let Some(accelerated) = self.accelerated_session(model) {
            return Ok(accelerated);
        }
        let session = self
            .cpu_session(model)
            .map_err(|err| ModelError::Runtime(format!("{}: {err}", model.display())))?;
        Ok((session, "cpu"))
    }

    fn cpu_session(&self, model: &Path) -> ort::Result<Session> {
        Session::builder(&self.env)?
            .with_intra_threads(self.intra_threads)?
            .with_inter_threads(1)?
            // Spinning threads halve decode speed when the CPU is shared (measured).
            .with_intra_op_spinning(false)?
            .commit_from_file(model)
    }

    /// Tries the accelerators compiled in, each registered with `error_on_failure` so that a
    /// failure is seen and logged instead of silently running on the CPU.
    #[allow(unused_variables)]
    fn accelerated_session(&self, model: &Path) -> Option<(Session, &'static str)> {
        #[cfg(feature = "cuda")]
        match self.session_with(model, ort::ep::CUDA::default().build().error_on_failure()) {
            Ok(session) => return Some((session, "cuda")),
            Err(err) => tracing::warn!(error = %err, "CUDA unavailable; falling back"),
        }
        #[cfg(feature = "coreml")]
        match self.session_with(model, ort::ep::CoreML::default().build().error_on_failure()) {
            Ok(session) => return Some((session, "coreml")),
            Err(err) => tracing::warn!(error = %err, "CoreML unavailable; falling back"),
        }
        None
    }

    #[cfg(any(feature = "cuda", feature = "coreml"))]
    fn session_with(
        &self,
        model: &Path,
        provider: ort::ep::ExecutionProviderDispatch,
    ) -> ort::Result<Session> {
        Session::builder(&self.env)?
            .with_execution_providers([provider])?
            .with_intra_threads(self.intra_threads)?
            .with_intra_op_spinning(false)?
            .commit_from_file(model)
    }
}
