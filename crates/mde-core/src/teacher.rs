//! The teacher-LLM interface. The generation crate implements it for OpenAI-compatible servers;
//! the synthetic world implements it offline; the sampler's classifier consumes it. It lives here
//! so those crates need not depend on each other.
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::pin::Pin;

/// A boxed, sendable future (keeps the trait object-safe without extra dependencies).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One chat message.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// "system", "user" or "assistant".
    pub role: String,
    pub content: String,
    /// Images for vision-capable teachers (paths or data URLs); ignored by text-only teachers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<String>,
}

impl ChatMessage {
    pub fn system(content: impl Into<String>) -> Self {
        Self {
            role: "system".into(),
            content: content.into(),
            images: vec![],
        }
    }
    pub fn user(content: impl Into<String>) -> Self {
        Self {
            role: "user".into(),
            content: content.into(),
            images: vec![],
        }
    }
}

/// What a request is for; offline teachers use it to answer from ground truth.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "task", rename_all = "snake_case")]
pub enum TeacherTask {
    /// Free chat (IPO critique/correction, anything else).
    #[default]
    Chat,
    /// Generate one Q&A for this query.
    Generate { query: crate::records::GenQuery },
    /// Classify these numbered questions into these type names.
    Classify {
        questions: Vec<String>,
        types: Vec<String>,
    },
}

/// A chat-completion request with the original's sampling settings as defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TeacherRequest {
    pub messages: Vec<ChatMessage>,
    pub temperature: f32,
    pub top_p: f32,
    pub max_tokens: u32,
    pub stop: Vec<String>,
    #[serde(default)]
    pub task: TeacherTask,
}

impl Default for TeacherRequest {
    fn default() -> Self {
        Self {
            messages: vec![],
            temperature: 0.7,
            top_p: 0.9,
            max_tokens: 800,
            stop: vec!["###".into()],
            task: TeacherTask::Chat,
        }
    }
}

/// A teacher's reply with token usage (0 when unknown).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TeacherReply {
    pub text: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub model: String,
}

/// Errors a teacher reports. `retryable` tells the runner whether to back off and try again.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct TeacherError {
    pub message: String,
    pub retryable: bool,
    /// Seconds the server asked us to wait (Retry-After), if any.
    pub retry_after: Option<f64>,
}

impl TeacherError {
    pub fn fatal(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: false,
            retry_after: None,
        }
    }
    pub fn retryable(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: true,
            retry_after: None,
        }
    }
}

/// A teacher LLM: one chat completion per call.
pub trait Teacher: Send + Sync {
    /// Human-readable name (model id), for logs and summaries.
    fn name(&self) -> String;
    fn complete<'a>(
        &'a self,
        req: &'a TeacherRequest,
    ) -> BoxFuture<'a, Result<TeacherReply, TeacherError>>;
}
