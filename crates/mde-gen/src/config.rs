//! TOML configuration of a generation run: the teacher endpoint, the runner's limits and budgets,
//! the prompt template and the post-processing options.
//!
//! ```toml
//! [teacher]
//! base_url = "http://127.0.0.1:8000/v1"   # OpenAI, vLLM, Ollama (/v1), llama.cpp server
//! model = "gpt-4"
//! api_key_env = "OPENAI_API_KEY"          # the key is read from this env var, never printed
//! timeout_s = 120
//!
//! [runner]
//! concurrency = 16
//! max_attempts = 8
//! max_total_tokens = 2_000_000
//! max_cost = 50.0
//! price_prompt_per_1k = 0.03
//! price_completion_per_1k = 0.06
//! ```
use crate::error::{GenError, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Which wire dialect the teacher speaks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TeacherKind {
    /// OpenAI-compatible `/chat/completions` (OpenAI, vLLM, Ollama, llama.cpp server).
    #[default]
    Openai,
    /// Azure OpenAI (deployment + api-version in the URL, `api-key` header).
    Azure,
}

/// Teacher endpoint settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TeacherConfig {
    pub kind: TeacherKind,
    /// API base including the version path, e.g. `https://api.openai.com/v1`.
    pub base_url: String,
    pub model: String,
    /// Name of the environment variable holding the API key. Missing/empty variable: no key
    /// (local servers). The key itself never appears in configs, logs or summaries.
    pub api_key_env: Option<String>,
    /// Per-request HTTP timeout (whole request, connect to last byte).
    pub timeout_s: f64,
    /// Connect timeout.
    pub connect_timeout_s: f64,
    /// Send the query image (`image_url` part, base64 data URL for local files). The original
    /// sent text only, so this is off by default.
    pub vision: bool,
    /// Directory that `GenQuery::image_path` is relative to (vision only). Query images must
    /// resolve inside it (`mde_core::paths`): a query naming `/etc/passwd` or `../x.png` is
    /// refused, so no local file outside this folder is ever sent to the teacher. Without it,
    /// `vision = true` sends no local file at all.
    pub image_root: Option<PathBuf>,
    /// Explicit opt-in: send query images given as absolute paths anywhere on this machine
    /// (for query files your own pipeline wrote). Relative paths still stay inside
    /// `image_root`. Off by default.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub allow_absolute_image_paths: bool,
    /// Azure deployment id and API version (kind = "azure").
    pub azure_deployment: Option<String>,
    pub azure_api_version: Option<String>,
    /// Sampling settings (defaults: the original's 0.7 / 0.9 / 800 / ["###"]).
    pub temperature: f32,
    pub top_p: f32,
    pub max_tokens: u32,
    pub stop: Vec<String>,
}

impl Default for TeacherConfig {
    fn default() -> Self {
        Self {
            kind: TeacherKind::Openai,
            base_url: "https://api.openai.com/v1".into(),
            model: "gpt-4".into(),
            api_key_env: Some("OPENAI_API_KEY".into()),
            timeout_s: 120.0,
            connect_timeout_s: 10.0,
            vision: false,
            image_root: None,
            allow_absolute_image_paths: false,
            azure_deployment: None,
            azure_api_version: None,
            temperature: 0.7,
            top_p: 0.9,
            max_tokens: 800,
            stop: vec!["###".into()],
        }
    }
}

impl TeacherConfig {
    /// Checks, before any request is made, that every query image this teacher would send
    /// resolves under [`Self::image_policy`]. `source` names the query file for the error
    /// (`queries.jsonl line 3 (query q7): image reference "/etc/passwd" is an absolute path
    /// outside the image root ...`). Text-only teachers (`vision = false`) send no image, and
    /// http(s)/data URLs are not local files, so neither is checked.
    pub fn check_query_images(
        &self,
        queries: &[mde_core::records::GenQuery],
        source: &Path,
    ) -> Result<()> {
        if !self.vision {
            return Ok(());
        }
        let policy = self.image_policy();
        for (i, q) in queries.iter().enumerate() {
            let Some(img) = q.image_path.as_deref() else {
                continue;
            };
            if is_remote_image(img) {
                continue;
            }
            let at = |msg: String| GenError::Config {
                path: source.to_path_buf(),
                msg: format!("line {} (query {}): {msg}", i + 1, q.id),
            };
            let file = policy.resolve(img).map_err(|e| at(e.to_string()))?;
            // A missing image would only fail at request time, one query at a time.
            if !file.is_file() {
                return Err(at(format!(
                    "image {img:?} not found (looked for {})",
                    file.display()
                )));
            }
        }
        Ok(())
    }

    /// The path policy for query images sent to the teacher (see [`mde_core::paths`]).
    pub fn image_policy(&self) -> mde_core::paths::PathPolicy {
        mde_core::paths::PathPolicy {
            root: self.image_root.clone(),
            allow_absolute: self.allow_absolute_image_paths,
            root_key: "[teacher] image_root".into(),
        }
    }

    /// Sets the request's sampling settings from this config.
    pub fn apply_sampling(&self, req: &mut mde_core::teacher::TeacherRequest) {
        req.temperature = self.temperature;
        req.top_p = self.top_p;
        req.max_tokens = self.max_tokens;
        req.stop = self.stop.clone();
    }
}

/// Whether an image reference is a URL the teacher fetches itself (not a local file).
pub fn is_remote_image(img: &str) -> bool {
    img.starts_with("http://") || img.starts_with("https://") || img.starts_with("data:")
}

/// Runner limits, retry policy and budgets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunnerConfig {
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Attempts per query (first try included) before the query is recorded as failed.
    pub max_attempts: u32,
    /// Exponential backoff: base * 2^(attempt-1), capped, times a jitter factor in [0.5, 1].
    pub backoff_base_s: f64,
    pub backoff_max_s: f64,
    /// Upper bound on a server's Retry-After that we honour (longer waits are clamped).
    pub retry_after_max_s: f64,
    /// Runner-side timeout per attempt (a guard around the client's own timeout).
    pub request_timeout_s: f64,
    /// Stop starting new requests once prompt+completion tokens reach this.
    pub max_total_tokens: Option<u64>,
    /// Stop starting new requests once the cost reaches this (same currency as the prices).
    pub max_cost: Option<f64>,
    pub price_prompt_per_1k: f64,
    pub price_completion_per_1k: f64,
    /// Show an indicatif progress bar on stderr.
    pub progress: bool,
    /// Seed of the backoff jitter (None: from entropy).
    pub jitter_seed: Option<u64>,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        Self {
            concurrency: 8,
            max_attempts: 8,
            backoff_base_s: 1.0,
            backoff_max_s: 60.0,
            retry_after_max_s: 300.0,
            request_timeout_s: 150.0,
            max_total_tokens: None,
            max_cost: None,
            price_prompt_per_1k: 0.0,
            price_completion_per_1k: 0.0,
            progress: true,
            jitter_seed: None,
        }
    }
}

/// Prompt template selection.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PromptConfig {
    /// Generation template file; None: the embedded `configs/prompts/generate_v1.txt`.
    pub generate_template: Option<PathBuf>,
    /// Send the prompt as a system message instead of a user message.
    pub as_system: bool,
}

/// Whole `--teacher CONFIG.toml` file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GenConfig {
    pub teacher: TeacherConfig,
    pub runner: RunnerConfig,
    pub prompt: PromptConfig,
    pub postprocess: crate::postprocess::PostprocessConfig,
}

impl GenConfig {
    /// Reads a TOML config; errors name the file. Relative template paths are resolved against
    /// the config file's directory.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| GenError::Config {
            path: path.into(),
            msg: e.to_string(),
        })?;
        let mut cfg: GenConfig = toml::from_str(&text).map_err(|e| GenError::Config {
            path: path.into(),
            msg: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        if let Some(t) = &cfg.prompt.generate_template {
            if t.is_relative() && !t.exists() {
                cfg.prompt.generate_template = Some(base.join(t));
            }
        }
        cfg.validate().map_err(|msg| GenError::Config {
            path: path.into(),
            msg,
        })?;
        Ok(cfg)
    }

    /// Checks value ranges; returns a message naming the bad key.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let r = &self.runner;
        if r.concurrency == 0 {
            return Err("runner.concurrency must be >= 1".into());
        }
        if r.max_attempts == 0 {
            return Err("runner.max_attempts must be >= 1".into());
        }
        // Durations are built with `Duration::from_secs_f64`, which rejects NaN/inf/negative.
        let positive = [
            ("teacher.timeout_s", self.teacher.timeout_s),
            ("teacher.connect_timeout_s", self.teacher.connect_timeout_s),
            ("runner.request_timeout_s", r.request_timeout_s),
        ];
        for (k, v) in positive {
            if !(v.is_finite() && v > 0.0 && v <= 1e6) {
                return Err(format!("{k} must be in (0, 1e6] seconds, got {v}"));
            }
        }
        let non_negative = [
            ("runner.backoff_base_s", r.backoff_base_s),
            ("runner.backoff_max_s", r.backoff_max_s),
            ("runner.retry_after_max_s", r.retry_after_max_s),
        ];
        for (k, v) in non_negative {
            if !(v.is_finite() && (0.0..=1e6).contains(&v)) {
                return Err(format!("{k} must be in [0, 1e6] seconds, got {v}"));
            }
        }
        if self.teacher.model.is_empty() {
            return Err("teacher.model must not be empty".into());
        }
        match reqwest::Url::parse(&self.teacher.base_url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.has_host() => {}
            _ => {
                return Err(format!(
                    "teacher.base_url = {:?}: expected an http(s) URL such as \
                     \"https://api.openai.com/v1\"",
                    self.teacher.base_url
                ))
            }
        }
        let t = &self.teacher;
        if !(t.temperature.is_finite() && (0.0..=2.0).contains(&t.temperature)) {
            return Err(format!(
                "teacher.temperature = {}: must be in [0, 2] (the OpenAI range)",
                t.temperature
            ));
        }
        if !(t.top_p > 0.0 && t.top_p <= 1.0) {
            return Err(format!("teacher.top_p = {}: must be in (0, 1]", t.top_p));
        }
        if t.max_tokens == 0 {
            return Err("teacher.max_tokens must be >= 1".into());
        }
        if self.teacher.kind == TeacherKind::Azure && self.teacher.azure_deployment.is_none() {
            return Err(
                "teacher.azure_deployment is required when teacher.kind = \"azure\"".into(),
            );
        }
        Ok(())
    }
}
